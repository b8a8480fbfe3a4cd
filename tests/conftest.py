"""Hypothesis's settings for every run of the suite (the property tests: tests/unit/*/test_fuzz_*.py).

The `ci` profile, the default: a fixed number of examples per property, generated from a
fixed seed (derandomize), so that every run, in CI or on a developer's machine, tries the same
inputs and a failure is reproducible from the test's name alone; no deadline per example (the
machine is shared and its timing noisy: a slow example is not a bug here); no example
database (a failure found once is not replayed from .hypothesis/, the seed does that; what
Hypothesis still keeps there are caches, which it git-ignores itself). HYPOTHESIS_PROFILE=deep
runs many more examples from a random seed, for a developer hunting (minutes, not for CI).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=5000,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
