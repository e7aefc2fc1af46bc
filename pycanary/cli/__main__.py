"""`python -m pycanary.cli ...`: the same entry point as the `pycanary` script."""

from .app import main

main()
