"""The configuration: the option table, the records it makes, the command line and the config
file."""
