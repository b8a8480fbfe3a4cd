"""`python -m hapolicy`."""

from .cli import run

run()
