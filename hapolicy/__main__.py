"""`python -m hapolicy`."""

from hapolicy.cli import run

run()
