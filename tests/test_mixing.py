"""sparkfeed.mix on caches the real Spark session wrote: weights, epochs, shards, columns, every adapter."""

from __future__ import annotations

import inspect
import itertools
import json
import pickle
import warnings
from typing import Any

import numpy as np
import pytest

import sparkfeed
from sparkfeed import SparkDatasetConverter, make_spark_converter, mix
from sparkfeed.mixing import Mixture

WIKI, CODE = 400, 150
CODE_START = 100_000


def _frame(spark: Any, start: int, rows: int, partitions: int) -> Any:
    return spark.range(start, start + rows, numPartitions=partitions).selectExpr(
        "id", "CAST(id AS FLOAT) * 0.5 AS x", "array(CAST(id AS FLOAT), CAST(-id AS FLOAT)) AS v"
    )


@pytest.fixture(scope="module")
def sources(spark) -> dict[str, SparkDatasetConverter]:
    """Two caches with the same columns, ids that say which one a row is from, several row groups each."""
    return {
        "wiki": make_spark_converter(_frame(spark, 0, WIKI, 4)),
        "code": make_spark_converter(_frame(spark, CODE_START, CODE, 3)),
    }


def _ids(batches: list[dict[str, Any]]) -> np.ndarray:
    return np.concatenate([np.asarray(batch["id"]) for batch in batches])


def _numpy(mixture: Mixture, **kwargs: Any) -> list[dict[str, np.ndarray]]:
    with mixture.make_numpy_iterator(**kwargs) as loader:
        return [{name: array.copy() for name, array in batch.items()} for batch in loader]


def test_rows_follow_the_weights_and_the_source_column_names_each_rows_source(sources) -> None:
    mixture = mix(sources, {"wiki": 0.7, "code": 0.3}, seed=1, stop="never", rows_per_epoch=4000, source_column="src")
    batches = _numpy(mixture, batch_size=100, num_epochs=1)
    assert [len(b["id"]) for b in batches] == [100] * 40
    src = np.concatenate([b["src"] for b in batches])
    assert src.dtype == np.int32 and abs((src == 0).mean() - 0.7) < 0.03
    ids = _ids(batches)
    assert np.array_equal(src, (ids >= CODE_START).astype(np.int32))  # index into mixture.names
    assert mixture.names == ("wiki", "code")
    first = batches[0]
    assert first["v"].shape == (100, 2) and np.array_equal(first["v"][:, 0], first["id"].astype(np.float32))


def test_granularity_batch_gives_whole_batches_of_one_source_in_the_weights_proportions(sources) -> None:
    mixture = mix(
        sources,
        {"wiki": 0.7, "code": 0.3},
        seed=3,
        stop="never",
        rows_per_epoch=20_000,
        source_column="src",
        granularity="batch",
    )
    batches = _numpy(mixture, batch_size=40, num_epochs=1)
    assert [len(b["id"]) for b in batches] == [40] * 500
    firsts = np.array([b["src"][0] for b in batches])
    assert all((b["src"] == b["src"][0]).all() for b in batches)  # one source a batch
    assert abs((firsts == 0).mean() - 0.7) < 0.06  # 500 draws of a 0.7 share: 5 sigma is 0.10
    ids = _ids(batches)
    assert np.array_equal(np.concatenate([b["src"] for b in batches]), (ids >= CODE_START).astype(np.int32))
    # Each source goes through its own epochs, one after another, whichever batches its rows fill.
    for start, size in ((0, WIKI), (CODE_START, CODE)):
        used = ids[(ids >= start) & (ids < start + size)]
        for window in range(0, len(used) - size + 1, size):
            assert sorted(used[window : window + size].tolist()) == list(range(start, start + size))


def test_granularity_batch_hands_out_views_of_the_sources_batches(sources) -> None:
    """Batches of one source are views of the chunks its reader decoded: only one that straddles two is a copy.

    (A row mixture copies its batches into blocks that hold both sources' rows.)
    """
    mixture = mix(sources, {"wiki": 0.5, "code": 0.5}, seed=4, stop="never", granularity="batch")
    with mixture.make_numpy_iterator(batch_size=8, num_epochs=1) as loader:
        batches = [batch for batch in loader]
    wiki = [batch["x"] for batch in batches if batch["id"][0] < CODE_START]
    code = {id(_owner(batch["x"])) for batch in batches if batch["id"][0] >= CODE_START}
    # The wiki cache's row groups hold about 100 rows: a copy at most where a batch crosses into the next.
    assert sum(batch.flags.owndata for batch in wiki) <= len(wiki) * 8 // 100 + 1
    assert not any(id(_owner(batch)) in code for batch in wiki)
    shared = sum(_owner(a) is _owner(b) for a, b in itertools.pairwise(wiki))
    assert shared >= len(wiki) // 2


def _owner(array: np.ndarray) -> Any:
    """What holds an array's memory: the same object for every view of one buffer."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array if array.base is None else array.base


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_granularity_batch_with_a_transform_and_a_source_column(sources, pool: str) -> None:
    """The sources' readers convert and add the source column in their own workers, threads or processes."""
    spec = sparkfeed.TransformSpec(lambda frame: frame.assign(x=frame["x"] * 2))
    mixture = mix(sources, seed=6, source_column="src", granularity="batch")
    batches = _numpy(mixture, batch_size=16, num_epochs=1, transform_spec=spec, reader_pool_type=pool, workers_count=2)
    assert sum(len(b["id"]) for b in batches) >= 16 * (len(batches) - 1)
    for batch in batches:
        assert list(batch) == ["id", "x", "v", "src"]
        assert np.array_equal(batch["x"], batch["id"].astype(np.float32))  # 2 * (id * 0.5)
        assert np.array_equal(batch["src"], (batch["id"] >= CODE_START).astype(np.int32))
        assert len(set(batch["src"].tolist())) == 1
    clash = sparkfeed.TransformSpec(lambda frame: frame.assign(src=1))
    with pytest.raises(ValueError, match="source_column='src' is also a column of source"):
        _numpy(mixture, batch_size=16, num_epochs=1, transform_spec=clash)


def test_an_epoch_ends_at_the_first_exhausted_source_having_used_each_of_its_rows_once(sources) -> None:
    mixture = mix(sources, {"wiki": 0.5, "code": 0.5}, seed=2)
    with mixture.make_numpy_iterator(batch_size=32, num_epochs=2) as loader:
        expected = len(loader)
        epochs: list[list[np.ndarray]] = [[], []]
        for batch in loader:
            state = loader.state_dict()
            epochs[state["epoch"] - 1 if state["batch"] == 0 else state["epoch"]].append(batch["id"].copy())
    assert sum(len(e) for e in epochs) == expected
    for batches in epochs:
        ids = np.concatenate(batches)
        assert len(set(ids.tolist())) == len(ids)  # no row twice in an epoch
        assert sorted(ids[ids >= CODE_START].tolist()) == list(range(CODE_START, CODE_START + CODE))
        assert 0 < (ids < CODE_START).sum() < WIKI  # the rest of wiki is not read this epoch
        assert all(len(b) == 32 for b in batches[:-1]) and len(batches[-1]) < 32


def test_stop_never_repeats_each_source_through_its_own_epochs(sources) -> None:
    mixture = mix(sources, {"wiki": 0.5, "code": 0.5}, seed=3, stop="never", rows_per_epoch=1000)
    batches = _numpy(mixture, batch_size=64, num_epochs=2)
    assert sum(len(b["id"]) for b in batches) == 2000 and len(batches[-1]["id"]) == 1000 - 15 * 64
    code = [i for i in _ids(batches).tolist() if i >= CODE_START]
    assert len(code) > 3 * CODE  # the small source went round several times
    for start in range(0, len(code) - CODE + 1, CODE):  # each of its own epochs: every row once
        assert sorted(code[start : start + CODE]) == list(range(CODE_START, CODE_START + CODE))


def test_weights_none_follow_the_sources_sizes(sources) -> None:
    mixture = mix(sources)
    assert mixture.weights == pytest.approx({"wiki": WIKI / (WIKI + CODE), "code": CODE / (WIKI + CODE)})
    assert "wiki" in repr(mixture)


def test_the_same_seed_gives_the_same_batches(sources) -> None:
    mixture = mix(sources, seed=9)
    first = _numpy(mixture, batch_size=50, num_epochs=1)
    second = _numpy(pickle.loads(pickle.dumps(mixture)), batch_size=50, num_epochs=1)  # travels to other processes
    assert len(first) == len(second)
    assert all(np.array_equal(a["id"], b["id"]) for a, b in zip(first, second, strict=True))


def test_every_rank_gets_the_same_batches_sizes_and_its_own_rows(sources) -> None:
    mixture = mix(sources, {"wiki": 0.6, "code": 0.4}, seed=4, source_column="src")
    ranks = []
    for rank in range(2):  # both sources' sizes are even: no shard is padded with another's row
        with mixture.make_numpy_iterator(batch_size=16, num_epochs=1, cur_shard=rank, shard_count=2) as loader:
            expected = len(loader)
            batches = [{name: array.copy() for name, array in b.items()} for b in loader]
        assert len(batches) == expected
        ranks.append(batches)
    assert len({len(batches) for batches in ranks}) == 1
    for step in zip(*ranks, strict=True):  # the same draw on every rank: the same rows from each source
        assert len({tuple(np.bincount(b["src"], minlength=2)) for b in step}) == 1
    rows = [_ids(batches) for batches in ranks]
    assert not set(rows[0].tolist()) & set(rows[1].tolist())
    assert sorted(i for r in rows for i in r.tolist() if i >= CODE_START) == list(range(CODE_START, CODE_START + CODE))


def test_sharded_mixtures_need_a_seed_and_shards_of_equal_size(sources) -> None:
    with pytest.raises(ValueError, match="seed="):
        mix(sources).make_numpy_iterator(cur_shard=0, shard_count=2)
    with pytest.raises(ValueError, match="shard_policy='exact'"):
        mix(sources, seed=1).make_numpy_iterator(cur_shard=0, shard_count=2, shard_policy="exact")
    mix(sources).make_numpy_iterator(cur_shard=0, shard_count=2, seed=1).close()  # the loader's seed will do


def test_a_state_resumes_on_its_own_shard_or_every_shards_on_another_count(sources) -> None:
    mixture = mix(sources, seed=5, source_column="src")
    kwargs: dict[str, Any] = {"batch_size": 8, "num_epochs": 1, "shard_policy": "drop"}
    states, used = [], []
    for rank in range(2):
        with mixture.make_torch_dataloader(cur_shard=rank, shard_count=2, **kwargs) as loader:
            batches = iter(loader)
            used += [int(i) for _ in range(5) for i in next(batches)["id"]]
            states.append(json.loads(json.dumps(loader.state_dict())))
    with mixture.make_numpy_iterator(cur_shard=1, shard_count=2, **kwargs) as loader:
        with pytest.raises(ValueError, match="saved by shard 0 of 2"):
            loader.load_state_dict(states[0])
        with pytest.raises(ValueError, match="expected the states of all 2 shards"):
            loader.load_state_dict(states[:1] + states[:1])
        loader.load_state_dict(states[1])
    # Every shard's states: the rest of the epoch split among 3 ranks, which end it together.
    counts = []
    for rank in range(3):
        with mixture.make_torch_dataloader(cur_shard=rank, shard_count=3, **kwargs) as loader:
            loader.load_state_dict(states)
            expected = len(loader)
            rest = list(loader)
        assert len(rest) == expected
        counts.append(len(rest))
        used += [int(i) for batch in rest for i in batch["id"]]
    assert len(set(counts)) == 1
    assert len(set(used)) == len(used)  # no row twice in the epoch
    wiki, code = sum(i < CODE_START for i in used), sum(i >= CODE_START for i in used)
    assert code >= CODE - 3 or wiki >= WIKI - 3  # a source ran out (drop leaves out at most a row a shard)
    # A transform may drop rows: which rows a position has passed is then known only by reading them.
    same = {**kwargs, "transform_fn": lambda frame: frame}
    saved = []
    for rank in range(2):
        with mixture.make_numpy_iterator(cur_shard=rank, shard_count=2, **same) as loader:
            next(iter(loader))
            saved.append(loader.state_dict())
    with mixture.make_numpy_iterator(cur_shard=0, shard_count=3, **same) as loader:
        with pytest.raises(ValueError, match="source 'wiki' cannot be resharded: with filters, a predicate or a"):
            loader.load_state_dict(saved)


def test_sources_must_agree_on_columns_and_schema_fields_selects_the_common_ones(spark, sources) -> None:
    doubles = _frame(spark, 500_000, 50, 1).selectExpr("id", "CAST(x AS DOUBLE) AS x", "v")
    wide = make_spark_converter(doubles, dtype=None)
    with pytest.raises(ValueError, match=r"column 'x' is float32 .* source 'wiki' but float64 .* source 'wide'"):
        mix({"wiki": sources["wiki"], "wide": wide}).make_numpy_iterator()
    batches = _numpy(mix({"wiki": sources["wiki"], "wide": wide}), batch_size=20, num_epochs=1, schema_fields=["id"])
    assert all(set(batch) == {"id"} for batch in batches) and 0 < (_ids(batches) >= 500_000).sum() <= 50
    with pytest.raises(ValueError, match="also a column"):
        mix(sources, source_column="x").make_numpy_iterator()


@pytest.mark.parametrize("granularity", ["row", "batch"])
def test_batches_have_the_first_sources_column_order_whichever_source_they_come_from(
    spark, sources, granularity: Any
) -> None:
    reordered = make_spark_converter(_frame(spark, 700_000, 60, 1).select("v", "x", "id"))
    mixture = mix({"wiki": sources["wiki"], "other": reordered}, seed=1, granularity=granularity, source_column="s")
    batches = _numpy(mixture, batch_size=16, num_epochs=1)
    assert {tuple(batch) for batch in batches} == {("id", "x", "v", "s")}
    assert {int(batch["s"][0]) for batch in batches} == {0, 1}  # both sources gave batches


def test_a_transform_runs_on_every_source_and_its_outputs_must_agree(spark, sources) -> None:
    def double(frame: Any) -> Any:
        frame["x"] = frame["x"] * 2
        return frame[["id", "x"]]

    batches = _numpy(mix(sources, seed=6), batch_size=25, num_epochs=1, transform_fn=double)
    assert all(set(b) == {"id", "x"} for b in batches)
    ids = _ids(batches)
    assert np.allclose(np.concatenate([b["x"] for b in batches]), ids.astype(np.float32))

    def as_float64_for_code(frame: Any) -> Any:
        if len(frame) and frame["id"].iloc[0] >= CODE_START:
            frame["x"] = frame["x"].astype("float64")
        return frame[["id", "x"]]

    with pytest.raises(ValueError, match=r"column 'x' is float(32|64) .* source '(wiki|code)' .*after the transform"):
        _numpy(mix(sources, seed=6), batch_size=25, num_epochs=1, transform_fn=as_float64_for_code)

    # NumPy's object dtype is the same for str and bytes, and for arrays of any dtype.
    def name_as(kind: str) -> Any:
        def name(frame: Any) -> Any:
            code = len(frame) and frame["id"].iloc[0] >= CODE_START
            text = [f"row {i}" for i in frame["id"]]
            frame["name"] = [t.encode() for t in text] if kind == "bytes" and code else text
            dtype = np.int32 if kind == "int32" and code else np.int64
            frame["tok"] = [np.arange(i % 3 + 1, dtype=dtype) for i in frame["id"]]  # varying: an object column
            return frame[["id", "name", "tok"]]

        return name

    names = _numpy(mix(sources, seed=6), batch_size=25, num_epochs=1, transform_fn=name_as("same"))
    assert {type(value) for batch in names for value in batch["name"]} == {str}
    for kind, message in (("bytes", "holds (str|bytes) in source"), ("int32", "holds arrays of int(32|64) in source")):
        with pytest.raises(ValueError, match=rf"column .(name|tok). {message} .*\(after the transform\)"):
            _numpy(mix(sources, seed=6), batch_size=25, num_epochs=1, transform_fn=name_as(kind))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"wiki": 1.0, "code": 0.0}, "finite number > 0"),
        ({"wiki": 1.0, "code": -2}, "finite number > 0"),
        ({"wiki": 1.0, "code": float("nan")}, "finite number > 0"),
        ({"wiki": 1.0, "code": float("inf")}, "finite number > 0"),
        ({"wiki": 1.0, "code": True}, "finite number > 0"),
        ({"wiki": 1.0, "code": "0.5"}, "finite number > 0"),
        ({"wiki": 1.0}, "map each source"),
        ({"wiki": 1.0, "code": 1.0, "web": 1.0}, "map each source"),
    ],
)
def test_weights_are_validated(sources, weights: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mix(sources, weights)


def test_other_arguments_are_validated_where_mix_is_called(sources) -> None:
    with pytest.raises(TypeError, match="not a converter"):
        mix({"a": sources["wiki"], "b": "s3://bucket/data"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="mapping of names"):
        mix([sources["wiki"]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        mix({})
    with pytest.raises(ValueError, match="stop="):
        mix(sources, stop="all_exhausted")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"granularity='rows' is not allowed: it must be one of \('row', 'batch'\)"):
        mix(sources, granularity="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rows_per_epoch=10 is not allowed with stop='first_exhausted'"):
        mix(sources, rows_per_epoch=10)
    with pytest.raises(ValueError, match="seed=-1"):
        mix(sources, seed=-1)
    with pytest.raises(ValueError, match="every epoch would be empty"):
        mix(sources, stop="never", rows_per_epoch=10).make_numpy_iterator(batch_size=32, drop_last=True)
    with pytest.raises(TypeError, match="accepted keywords"):
        mix(sources).make_numpy_iterator(shuffle=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"sequence= needs mix\(\.\.\., granularity='batch'\)"):
        mix(sources).make_numpy_iterator(sequence={"v": "pad"})
    with pytest.raises(ValueError, match="sequence= with stop='never' needs rows_per_epoch"):
        mix(sources, stop="never", granularity="batch").make_numpy_iterator(sequence={"v": "pad"})


def test_the_mixtures_loaders_take_the_converters_arguments() -> None:
    assert "mix" in sparkfeed.__all__
    for name in ("make_numpy_iterator", "make_torch_dataloader", "make_tf_dataset", "make_jax_iterator"):
        ours, theirs = getattr(Mixture, name), getattr(SparkDatasetConverter, name)
        assert inspect.signature(ours).parameters == inspect.signature(theirs).parameters, name


def test_a_mixture_of_a_deleted_converter_is_refused(spark) -> None:
    gone = make_spark_converter(spark.range(7).selectExpr("id", "CAST(id AS FLOAT) AS x"))
    mixture = mix({"a": gone, "b": gone})
    gone.delete()
    with pytest.raises(RuntimeError, match="was deleted"):
        mixture.make_numpy_iterator()


def test_progress_shows_one_bar_per_epoch_of_the_mixture(sources, capsys) -> None:
    _numpy(mix(sources, seed=1), batch_size=50, num_epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "epoch 0" in err and "epoch 1" in err


# ---------------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("granularity", ["row", "batch"])
def test_torch_batches_are_the_numpy_batches_as_tensors_and_resume_exactly(sources, granularity: Any) -> None:
    import torch

    mixture = mix(sources, {"wiki": 0.3, "code": 0.7}, seed=7, source_column="src", granularity=granularity)
    expected = _numpy(mixture, batch_size=20, num_epochs=2)
    with mixture.make_torch_dataloader(batch_size=20, num_epochs=2) as loader:
        assert len(loader) == len(expected)
        iterator = iter(loader)
        head = [next(iterator) for _ in range(9)]
        state = json.loads(json.dumps(loader.state_dict()))
    assert isinstance(head[0]["id"], torch.Tensor) and head[0]["v"].shape == (20, 2)
    assert head[0]["src"].dtype == torch.int32
    with mixture.make_torch_dataloader(batch_size=20, num_epochs=2) as loader:
        loader.load_state_dict(state)
        rest = list(loader)
    got = head + rest
    assert len(got) == len(expected)
    assert all(np.array_equal(a["id"].numpy(), b["id"]) for a, b in zip(got, expected, strict=True))
    assert all(np.array_equal(a["src"].numpy(), b["src"]) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("granularity", ["row", "batch"])
def test_tf_dataset_gives_the_numpy_batches_as_namedtuples_with_an_element_spec(sources, granularity: Any) -> None:
    import tensorflow as tf

    mixture = mix(sources, {"wiki": 0.5, "code": 0.5}, seed=8, source_column="src", granularity=granularity)
    expected = _numpy(mixture, batch_size=24, num_epochs=1)
    with mixture.make_tf_dataset(batch_size=24, num_epochs=1) as dataset:
        spec = dataset.element_spec
        assert spec._fields == ("id", "x", "v", "src")
        assert spec.v.shape.as_list() == [None, 2] and spec.src.dtype == tf.int32
        assert int(dataset.cardinality()) == len(expected)
        got = list(dataset)
    assert len(got) == len(expected)
    assert all(np.array_equal(a.id.numpy(), b["id"]) for a, b in zip(got, expected, strict=True))
    with mixture.make_tf_dataset(batch_size=24, num_epochs=1, drop_last=True) as dataset:
        assert int(dataset.cardinality()) == len(expected) - 1 == len(list(dataset))
    # Sampling with replacement and drop_last: the short batch is not drawn, in tf.data as elsewhere.
    forever = mix(sources, seed=8, stop="never", rows_per_epoch=500, granularity=granularity)
    expected = _numpy(forever, batch_size=24, num_epochs=3, drop_last=True)
    with forever.make_tf_dataset(batch_size=24, num_epochs=3, drop_last=True) as dataset:
        got = list(dataset)
    assert len(got) == len(expected) == 3 * (500 // 24)
    assert all(np.array_equal(a.id.numpy(), b["id"]) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("granularity", ["row", "batch"])
def test_jax_batches_are_the_numpy_batches_on_the_device(sources, granularity: Any) -> None:
    import jax

    mixture = mix(sources, seed=10, granularity=granularity)
    expected = _numpy(mixture, batch_size=16, num_epochs=1)
    with mixture.make_jax_iterator(batch_size=16, num_epochs=1) as loader:
        got = list(loader)
    assert isinstance(got[0]["x"], jax.Array) and got[0]["v"].shape == (16, 2)
    assert len(got) == len(expected)
    assert all(np.array_equal(np.asarray(a["id"]), b["id"]) for a, b in zip(got, expected, strict=True))


def test_stats_count_the_mixtures_batches_and_the_sources_workers(sources, caplog) -> None:
    import logging

    mixture = mix(sources, {"wiki": 0.5, "code": 0.5}, seed=5, stop="never", rows_per_epoch=320)
    with (
        caplog.at_level(logging.INFO, logger="sparkfeed"),
        mixture.make_torch_dataloader(batch_size=32, num_epochs=2) as loader,
    ):
        assert sum(len(batch["id"]) for batch in loader) == 640
        stats = loader.stats()
    assert (stats["batches"], stats["rows"]) == (20, 640) and stats["bytes"] == 640 * (8 + 4 + 8)
    assert stats["workers"] >= 2 and stats["busy_seconds"] > 0 and 0 <= stats["input_bound"] <= 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mixture epoch ")]
    assert len(lines) == 2 and all(": 10 batches, " in line and "input-bound" in line for line in lines)


# ---------------------------------------------------------------------------------- sequences


@pytest.fixture(scope="module")
def token_sources(spark) -> dict[str, SparkDatasetConverter]:
    """Two caches of token rows of varying length: token j of row i is i * 1000 + j."""

    def tokens(start: int, rows: int, longest: int) -> Any:
        return spark.range(start, start + rows, numPartitions=2).selectExpr(
            "id", f"transform(sequence(0, CAST(id * 7 % {longest} AS INT)), j -> CAST(id * 1000 + j AS INT)) AS tok"
        )

    return {"short": make_spark_converter(tokens(0, 300, 9)), "long": make_spark_converter(tokens(CODE_START, 200, 40))}


def _rows(batch: dict[str, Any]) -> dict[int, list[int]]:
    """Each row's tokens in a padded batch, by id."""
    lengths = np.asarray(batch["tok_lengths"])
    return {int(i): np.asarray(row)[:n].tolist() for i, row, n in zip(batch["id"], batch["tok"], lengths, strict=True)}


@pytest.mark.parametrize("mode", ["pad", "bucket", "pack"])
def test_a_mixture_of_sequences_gives_each_sources_own_batches_in_every_adapter(token_sources, mode: str) -> None:
    import jax
    import tensorflow as tf
    import torch

    mixture = mix(token_sources, {"short": 0.6, "long": 0.4}, seed=4, source_column="src", granularity="batch")
    spec = {
        "pad": "pad",
        "bucket": sparkfeed.Sequence("bucket", buckets=(8, 16, 64)),
        "pack": sparkfeed.Sequence("pack", seq_len=64),
    }[mode]
    kwargs: dict[str, Any] = {"batch_size": 8, "num_epochs": 1, "seed": 3, "sequence": {"tok": spec}}
    if mode == "pack":
        kwargs["schema_fields"] = ["tok"]
    expected = _numpy(mixture, **kwargs)
    assert {int(np.asarray(b["src"])[0]) for b in expected} == {0, 1}
    seen: dict[int, list[int]] = {}
    for batch in expected:
        assert len(set(np.asarray(batch["src"]).tolist())) == 1  # whole from one source
        if mode == "pack":
            ids = np.asarray(batch["tok"])[np.asarray(batch["tok_segment_ids"]) > 0] // 1000
            assert len(set((ids >= CODE_START).tolist())) == 1
            continue
        for row_id, tokens in _rows(batch).items():
            assert tokens == [row_id * 1000 + j for j in range(row_id * 7 % (40 if row_id >= CODE_START else 9) + 1)]
            assert row_id not in seen
            seen[row_id] = tokens
    if mode == "bucket":
        assert {np.asarray(b["tok"]).shape[1] for b in expected} <= {8, 16, 64}
    # one source ran out: the epoch used each of its rows once
    if mode != "pack":
        assert len([i for i in seen if i < CODE_START]) == 300 or len([i for i in seen if i >= CODE_START]) == 200

    with mixture.make_torch_dataloader(**kwargs) as loader:
        got = list(loader)
    assert len(got) == len(expected) and isinstance(got[0]["tok"], torch.Tensor)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[name].numpy(), b[name]) for name in b)

    with mixture.make_jax_iterator(**kwargs) as loader:
        got = list(loader)
    assert len(got) == len(expected) and isinstance(got[0]["tok"], jax.Array)
    for a, b in zip(got, expected, strict=True):
        assert all(np.array_equal(np.asarray(a[name]), b[name]) for name in b)

    with mixture.make_tf_dataset(**kwargs) as dataset:
        element = dataset.element_spec
        assert element.tok.dtype == tf.int32 and element.src.dtype == tf.int32
        assert element.tok.shape.as_list() == [None, 64 if mode == "pack" else None]
        tf_got = list(dataset)
    assert len(tf_got) == len(expected)
    for a, b in zip(tf_got, expected, strict=True):
        assert all(np.array_equal(getattr(a, name).numpy(), b[name]) for name in b)


def test_a_sequence_mixture_resumes_exactly_and_its_state_is_refused_without_sequences(token_sources) -> None:
    mixture = mix(token_sources, seed=5, granularity="batch", stop="never", rows_per_epoch=120)
    kwargs: dict[str, Any] = {"batch_size": 10, "num_epochs": 2, "sequence": {"tok": "bucket"}}
    expected = _numpy(mixture, **kwargs)
    assert len(expected) == 2 * 12  # an epoch of rows_per_epoch / batch_size batches
    with mixture.make_numpy_iterator(**kwargs) as loader:
        head = [{name: array.copy() for name, array in batch.items()} for batch in itertools.islice(loader, 7)]
        state = json.loads(json.dumps(loader.state_dict()))
    assert state["identity"]["sequence"] == '{"tok": {"mode": "bucket"}}'
    with mixture.make_numpy_iterator(**kwargs) as loader:
        loader.load_state_dict(state)
        rest = [{name: array.copy() for name, array in batch.items()} for batch in loader]
    assert len(head + rest) == len(expected)
    for a, b in zip(head + rest, expected, strict=True):
        assert all(np.array_equal(a[name], b[name]) for name in b)
    with mixture.make_numpy_iterator(**kwargs) as loader:
        loader.load_state_dict([state])  # every shard's states, on as many shards: each its own
        assert len(list(loader)) == len(rest)
    with mixture.make_numpy_iterator(**kwargs, cur_shard=0, shard_count=2) as loader:
        with pytest.raises(ValueError, match="a mixture of sequences resumes on the shard it was saved on"):
            loader.load_state_dict([state])
    plain = mix(token_sources, seed=5, granularity="batch", stop="never", rows_per_epoch=120)
    with plain.make_numpy_iterator(batch_size=10, num_epochs=2) as loader:
        with pytest.raises(ValueError, match="sequence="):
            loader.load_state_dict(state)


def test_a_sharded_mixture_of_padded_sequences_gives_every_rank_the_same_batch_count(token_sources) -> None:
    mixture = mix(token_sources, {"short": 0.5, "long": 0.5}, seed=6, granularity="batch")
    kwargs: dict[str, Any] = {"batch_size": 8, "num_epochs": 2, "sequence": {"tok": "pad"}, "shard_count": 3}
    counts, ids = [], []
    for shard in range(3):
        with mixture.make_numpy_iterator(cur_shard=shard, **kwargs) as loader:
            expected = len(loader)
            batches = list(loader)
        assert len(batches) == expected
        counts.append(len(batches))
        ids.append({int(i) for batch in batches for i in batch["id"]})
    assert len(set(counts)) == 1
    # each rank its own rows (a short shard repeats one row of its source, as DistributedSampler pads)
    assert all(len(ids[a] & ids[b]) <= 2 for a, b in itertools.combinations(range(3), 2))


@pytest.mark.parametrize("mode", ["bucket", "pack"])
def test_a_sharded_mixture_of_bucketed_or_packed_sequences_gives_every_rank_the_same_batch_count(
    token_sources, mode: str
) -> None:
    """Each source's readers end its epochs after the same batch on every rank, so the seeded draws do too."""
    mixture = mix(token_sources, {"short": 0.5, "long": 0.5}, seed=6, source_column="src", granularity="batch")
    spec = sparkfeed.Sequence("pack", seq_len=64) if mode == "pack" else sparkfeed.Sequence("bucket", buckets=(8, 64))
    kwargs: dict[str, Any] = {"batch_size": 4, "num_epochs": 2, "seed": 2, "sequence": {"tok": spec}, "shard_count": 3}
    if mode == "pack":  # (batch size 3: these ranks' own packed batches number 7, 12 and 7)
        kwargs.update(schema_fields=["tok"], batch_size=3)
    counts, sources = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every rank counts every shard's batches: nothing to warn about
        for shard in range(3):
            with mixture.make_numpy_iterator(cur_shard=shard, **kwargs) as loader:
                batches = list(loader)
            counts.append(len(batches))
            sources.append([int(batch["src"][0]) for batch in batches] if mode == "bucket" else None)
    assert len(set(counts)) == 1 and counts[0] > 0
    if mode == "bucket":  # the same draws on every rank: the same source for each batch
        assert sources[0] == sources[1] == sources[2]
