"""Debian packages a test needs: present, or the test fails in CI and is skipped elsewhere.

Installing them is the job of scripts/run-tests alone (CI runs it as root). A test that
finds one missing fails when CI=true is in the environment (CI must run every test) and
is skipped, with the package named, outside CI.
"""

from __future__ import annotations

import os
import subprocess

#: The file whose presence tells that a Debian package is installed.
PACKAGE_BINARIES = {
    "postfix": "/usr/sbin/postfix",
    "postfwd": "/usr/sbin/postfwd2",
    "hapolicy": "/usr/sbin/hapolicy",
    "haproxy": "/usr/sbin/haproxy",
    "postgrey": "/usr/sbin/postgrey",
    "python3": "/usr/bin/python3",
    "prometheus": "/usr/bin/prometheus",
    "chromium": "/usr/bin/chromium",
}


def package_present(name: str) -> bool:
    """Whether the Debian package *name* is installed (its binary, else dpkg-query)."""
    binary = PACKAGE_BINARIES.get(name)
    if binary is not None:
        return os.access(binary, os.X_OK)
    query = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", name], check=False, capture_output=True, text=True
    )
    return query.returncode == 0 and query.stdout.endswith(" installed")


def in_ci() -> bool:
    """Whether this runs in CI (CI=true in the environment)."""
    return os.environ.get("CI", "").lower() == "true"


def require_packages(*names: str) -> None:
    """Return when every package is installed; else fail the test in CI, skip it elsewhere."""
    missing = [name for name in names if not package_present(name)]
    if not missing:
        return
    import pytest  # here: the scripts import testkit.perl, which imports this, without pytest

    message = (f"Debian package(s) {' '.join(missing)} not installed "
               "(scripts/run-tests installs them, as root)")
    if in_ci():
        pytest.fail(f"{message}; CI=true: a missing package fails, it is not skipped",
                    pytrace=False)
    pytest.skip(message)
