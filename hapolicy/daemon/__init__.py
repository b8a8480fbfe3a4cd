"""Daemon mode: the master, its children (workers and the monitor), their supervision, reload,
startup."""
