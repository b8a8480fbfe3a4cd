"""What the monitor process serves: the active checks, the control socket and its commands, the
metrics."""
