"""Spawn mode: one process per SMTP connection, health shared through a state file."""
