"""The reader engine: planning, threaded reading and batching of a cached dataset."""

from sparkfeed.reader.engine import Reader

__all__ = ["Reader"]
