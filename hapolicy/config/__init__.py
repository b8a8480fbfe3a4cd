"""The configuration: the option table, its two records, the command line, the config file."""
