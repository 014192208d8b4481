"""sparkfeed: Spark DataFrames as fast PyTorch, TensorFlow, JAX and NumPy input.

A drop-in successor to Petastorm's Spark Dataset Converter: change
``from petastorm.spark import make_spark_converter`` to ``from sparkfeed import make_spark_converter``.
"""

__version__ = "0.1.0"

from sparkfeed.converter import SparkDatasetConverter, make_spark_converter, register_delete_dir_handler
from sparkfeed.inference import make_predict_fn
from sparkfeed.mixing import mix
from sparkfeed.sequence import Sequence
from sparkfeed.transform import TransformSpec
from sparkfeed.types import NullValueError, UnsupportedTypeError

__all__ = [
    "NullValueError",
    "Sequence",
    "SparkDatasetConverter",
    "TransformSpec",
    "UnsupportedTypeError",
    "__version__",
    "make_predict_fn",
    "make_spark_converter",
    "mix",
    "register_delete_dir_handler",
]
assert __all__ == sorted(__all__), "keep __all__ sorted"
