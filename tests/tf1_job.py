"""Run by test_tf.py in a process of its own: a TF1 program, eager execution disabled for good.

What a Petastorm user's TF1 training script does with the converter it was handed (pickled, as
to a Spark task): ``dataset.map(...).make_one_shot_iterator()`` and an initializable iterator in
``tf.compat.v1.Session`` s. Prints one JSON line of what it saw. Argument: the pickled converter.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import tensorflow as tf


def main(blob: str) -> None:
    tf.compat.v1.disable_eager_execution()  # process-wide, as TF1 scripts begin
    converter = pickle.loads(Path(blob).read_bytes())
    with converter.make_tf_dataset(25, None, 1, shuffle_row_groups=False) as dataset:
        doubled = dataset.map(lambda row: row.id * 2)
        one_shot = doubled.make_one_shot_iterator().get_next()
        initializable = dataset.make_initializable_iterator()
        batch = initializable.get_next()
        with tf.compat.v1.Session() as session:
            first = session.run(one_shot).tolist()
        # One pass of the reader at a time: closing that session dropped the unfinished one.
        with tf.compat.v1.Session() as session:
            session.run(initializable.initializer)
            ids: list[int] = []
            try:
                while True:
                    ids.extend(session.run(batch).id.tolist())
            except tf.errors.OutOfRangeError:
                pass
    seen = {
        "eager": tf.executing_eagerly(),
        "v1": isinstance(dataset, tf.compat.v1.data.Dataset) and isinstance(doubled, tf.compat.v1.data.Dataset),
        "types": [str(t.name) for t in dataset.output_types],
        "first": first,
        "ids": ids,
    }
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1])
