"""What the monitor process serves: the active checks, the control commands, the metrics."""
