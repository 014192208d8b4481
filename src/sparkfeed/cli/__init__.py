"""The ``sparkfeed`` command line: caches, datasets, the reader's speed and a demo.

One module a command group (``cache``, ``inspect``, ``bench``, ``demo``), each registered on
:func:`main` below. Commands import Spark and the frameworks only when they run, so that
``sparkfeed --help`` answers at once.
"""

from __future__ import annotations

import logging

import click

from sparkfeed import __version__
from sparkfeed.cli.bench import bench_command
from sparkfeed.cli.cache import cache_command
from sparkfeed.cli.demo import demo
from sparkfeed.cli.inspect import inspect_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sparkfeed")
@click.option("-v", "--verbose", count=True, help="Show sparkfeed's log: -v for INFO, -vv for DEBUG.")
def main(verbose: int) -> None:
    """sparkfeed: Spark DataFrames as fast PyTorch, TensorFlow, JAX and NumPy input."""
    if verbose:
        logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        logging.getLogger("sparkfeed").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


main.add_command(bench_command)
main.add_command(cache_command)
main.add_command(demo)
main.add_command(inspect_command)
