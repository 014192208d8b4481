"""The reader engine: planning, threaded reading and batching of a cached dataset."""

from sparkfeed.reader.engine import Reader
from sparkfeed.reader.state import ReaderState

__all__ = ["Reader", "ReaderState"]
