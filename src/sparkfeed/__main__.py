"""``python -m sparkfeed``: the same command line as ``sparkfeed``."""

from sparkfeed.cli import main

main(prog_name="sparkfeed")
