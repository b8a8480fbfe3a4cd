"""The shared tables: health, balancing, statistics and in-flight counts, one mmap per pool."""
