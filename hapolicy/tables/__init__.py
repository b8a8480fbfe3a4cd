"""The shared tables: health, balancing, statistics and in-flight counts of every service, in one
mmap per pool."""
