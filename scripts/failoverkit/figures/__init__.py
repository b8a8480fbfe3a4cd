"""The figures of scripts/failover.py, one module each (figures 1 and 2 share failover).

Each figure is a function of the run (and of the implementation or case it measures) that
stores its results in run.report and records what does not hold with run.problem().
"""
