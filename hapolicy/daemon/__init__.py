"""Daemon mode: the master, its workers and monitor, their supervision, reload and start."""
