"""Run by test_spark_connect.py in a mount namespace of its own: a Connect client that sees other files than its server.

The directory given is a private tmpfs here, so this client and the Spark Connect server, on
the one machine, see two different directories under one path, as a client and a remote server
do. Prints one JSON line: the error of each conversion into it (Spark's own writer, and the
tasks' pyarrow writer for array columns), or what it converted. Arguments: the server's
``sc://`` URL and the cache directory.
"""

from __future__ import annotations

import json
import os
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter


def main(url: str, cache_dir: str) -> None:
    spark = SparkSession.builder.remote(url).getOrCreate()
    out: dict[str, str] = {}
    frames = {"plain": spark.range(10), "arrays": spark.range(10).select(F.array("id", "id").alias("pair"))}
    for name, frame in frames.items():
        try:
            converter = make_spark_converter(frame, cache_dir=cache_dir)
            out[name] = f"converted {len(converter)} rows"
        except Exception as error:  # noqa: BLE001 - what the user sees is what the test checks
            out[name] = f"{type(error).__name__}: {error}"
    out["left_here"] = json.dumps(sorted(os.listdir(cache_dir)))
    spark.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
