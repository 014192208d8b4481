"""What the examples share: a Spark session, scikit-learn's digits as a DataFrame, the result line.

The digits are the demo's DataFrame (``sparkfeed demo``): 1,797 8x8 images, each as PNG bytes
(``png``) and as an MLlib vector of 64 intensities in [0, 1] (``pixels``), with an ``id`` and a
``label``. One row in five, chosen by a hash of the id, is held out for testing.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from sparkfeed.demo import digits_dataframe

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers: this interpreter


def spark_session(master: str = "local[2]") -> SparkSession:
    """A Spark session on ``master``: two local cores, or a cluster's URL (``spark://host:7077``)."""
    builder = (
        SparkSession.builder.master(master)
        .appName(os.path.basename(sys.argv[0]))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
    )
    if master.startswith("spark://"):  # a cluster on this machine (the tests start one on 127.0.0.1)
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.executor.memory", "1g")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def digits(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    """The digits split into training and held-out rows: ``id``, ``label``, ``png``, ``pixels``."""
    df = digits_dataframe(spark)
    held_out = F.pmod(F.xxhash64("id"), F.lit(5)) == 0
    return df.filter(~held_out), df.filter(held_out)


def report(**result: Any) -> None:
    """Prints what the example measured as one JSON line, the last of its output (the tests read it)."""
    print(json.dumps(result))
