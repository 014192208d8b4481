"""``cur_shard``/``shard_count="auto"`` and the rank check, against real launch environments.

The rank variables are set in this process's real environment; torch.distributed runs in two
gloo processes; Spark's barrier tasks run on the test session's local cluster.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest

from sparkfeed import make_spark_converter
from sparkfeed.distributed import (
    LAUNCHED_VARIABLES,
    LOCAL_VARIABLES,
    RANK_VARIABLES,
    Rank,
    detect_rank,
    environment_rank,
)
from sparkfeed.options import reader_options

from helpers import run_gloo_ranks


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No rank variable from outside the test: each test sets its own."""
    for pair in (*RANK_VARIABLES, *LAUNCHED_VARIABLES, ("SLURM_NTASKS", "SLURM_PROCID"), LOCAL_VARIABLES):
        for name in pair:
            monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("rank_name", "size_name"), RANK_VARIABLES)
def test_auto_reads_each_launchers_variables(monkeypatch, rank_name: str, size_name: str) -> None:
    monkeypatch.setenv(rank_name, "2")
    monkeypatch.setenv(size_name, "3")
    assert environment_rank() == Rank(2, 3, f"{rank_name}/{size_name}")
    options = reader_options(cur_shard="auto", shard_count="auto")
    assert options.shard == (2, 3)
    with pytest.warns(UserWarning, match="cur_shard=2 and shard_count=6 disagree with the environment's rank 2 of 3"):
        assert reader_options(cur_shard="auto", shard_count=6).shard == (2, 6)  # an explicit count is kept


def test_the_first_pair_that_is_set_wins_and_half_a_pair_ends_the_search(monkeypatch) -> None:
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("PMI_RANK", "3")
    monkeypatch.setenv("PMI_SIZE", "5")
    assert environment_rank() == Rank(1, 4, "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("HOROVOD_RANK", "0")  # its size missing: not a launcher's environment, as in Petastorm
    assert environment_rank() is None
    monkeypatch.setenv("HOROVOD_SIZE", "two")
    assert environment_rank() is None
    monkeypatch.setenv("HOROVOD_SIZE", "2")
    assert environment_rank() == Rank(0, 2, "HOROVOD_RANK/HOROVOD_SIZE")


def test_auto_without_any_launcher_reads_everything_and_half_auto_is_refused() -> None:
    assert detect_rank() is None
    assert reader_options(cur_shard="auto", shard_count="auto").shard == (0, 1)
    with pytest.raises(ValueError, match=r"cur_shard='auto', shard_count=4: 'auto' found no rank .*HOROVOD_RANK"):
        reader_options(cur_shard="auto", shard_count=4)
    for variables in (  # variables of a job of one process: still everything
        {"LOCAL_RANK": "0"},
        {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"},
        {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"},
        {"SLURM_PROCID": "0"},  # a batch script, outside any srun step
    ):
        with pytest.MonkeyPatch.context() as patch:
            for name, value in variables.items():
                patch.setenv(name, value)
            assert reader_options(cur_shard="auto", shard_count="auto").shard == (0, 1), variables


def test_auto_under_torchrun_before_the_group_exists_is_refused_not_unsharded(monkeypatch) -> None:
    # torchrun's RANK/WORLD_SIZE, with no process group initialized yet: "auto" found no rank and
    # read everything, so each of the ranks read every row, once per rank, in silence.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert detect_rank() is None
    with pytest.raises(ValueError, match=r"RANK/WORLD_SIZE say rank 1 of 2, .*init_process_group"):
        reader_options(cur_shard="auto", shard_count="auto")
    with pytest.raises(ValueError, match=r"RANK/WORLD_SIZE say rank 1 of 2"):
        reader_options(cur_shard="auto", shard_count=2)
    assert reader_options(cur_shard=1, shard_count=2).shard == (1, 2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # a job of one process reads everything
    assert reader_options(cur_shard="auto", shard_count="auto").shard == (0, 1)


def test_auto_in_the_tasks_of_an_srun_step_is_refused_and_a_batch_scripts_allocation_is_not_a_job(monkeypatch) -> None:
    # `srun -n 4 python train.py` under PMIx (no PMI_RANK): each task read every row, in silence.
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert detect_rank() is None
    with pytest.raises(ValueError, match=r"SLURM_PROCID/SLURM_STEP_NUM_TASKS say rank 3 of 4, .*cur_shard=3"):
        reader_options(cur_shard="auto", shard_count="auto")
    assert reader_options(cur_shard=3, shard_count=4).shard == (3, 4)
    monkeypatch.setenv("PMI_RANK", "3")  # an MPI launch says the rank: taken
    monkeypatch.setenv("PMI_SIZE", "4")
    assert reader_options(cur_shard="auto", shard_count="auto").shard == (3, 4)
    for name in ("PMI_RANK", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name)
    # The batch script itself: an allocation of four tasks, one process, no step of its own.
    assert reader_options(cur_shard="auto", shard_count="auto").shard == (0, 1)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"HOROVOD_RANK": "1"}, "HOROVOD_RANK='1' is set but HOROVOD_SIZE is not"),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, "OMPI_COMM_WORLD_SIZE='4' is set but OMPI_COMM_WORLD_RANK is not"),
        ({"RANK": "1"}, "RANK='1' is set but WORLD_SIZE is not"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE='2' is set but RANK is not"),
        ({"HOROVOD_RANK": "5", "HOROVOD_SIZE": "2"}, "HOROVOD_RANK='5', HOROVOD_SIZE='2' is no rank"),
        ({"PMI_RANK": "-1", "PMI_SIZE": "2"}, "PMI_RANK='-1', PMI_SIZE='2' is no rank"),
        ({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_RANK='x'"),
        ({"HOROVOD_RANK": "0", "HOROVOD_SIZE": "0"}, "HOROVOD_RANK='0', HOROVOD_SIZE='0' is no rank"),
        ({"RANK": "3", "WORLD_SIZE": "2"}, "RANK='3', WORLD_SIZE='2' is no rank"),
        ({"RANK": "1_0", "WORLD_SIZE": "20"}, "RANK='1_0', WORLD_SIZE='20' is no rank"),  # int() reads ten
        ({"SLURM_PROCID": "4", "SLURM_STEP_NUM_TASKS": "4"}, "SLURM_PROCID='4', SLURM_STEP_NUM_TASKS='4' is no"),
        ({"LOCAL_RANK": "1"}, r"LOCAL_RANK/LOCAL_WORLD_SIZE \(LOCAL_RANK='1'\) name a process of a launched job"),
        ({"LOCAL_WORLD_SIZE": "4"}, r"\(LOCAL_WORLD_SIZE='4'\) name a process of a launched job"),
    ],
    ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else "message",
)
def test_auto_refuses_rank_variables_it_cannot_read_rather_than_read_everything(
    monkeypatch, variables: dict[str, str], message: str
) -> None:
    # Half a pair, non-integers, a rank outside [0, size) or a local rank without the global one:
    # "auto" found no rank and read the whole dataset on every rank of the job, in silence.
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert detect_rank() is None
    for shards in (("auto", "auto"), ("auto", 2)):
        with pytest.raises(ValueError, match=rf"'auto' found no rank it can trust: .*{message}"):
            reader_options(cur_shard=shards[0], shard_count=shards[1])
    assert reader_options(cur_shard=0, shard_count=2).shard == (0, 2)  # explicit shards are the user's word
    if set(variables) <= set(LOCAL_VARIABLES):  # a rank read elsewhere wins over what LOCAL_ cannot say
        monkeypatch.setenv("HOROVOD_RANK", "1")
        monkeypatch.setenv("HOROVOD_SIZE", "2")
        assert reader_options(cur_shard="auto", shard_count="auto").shard == (1, 2)


def test_shards_that_disagree_with_the_rank_variables_warn_at_the_users_line(monkeypatch, spark) -> None:
    monkeypatch.setenv("HOROVOD_RANK", "1")
    monkeypatch.setenv("HOROVOD_SIZE", "2")
    converter = make_spark_converter(spark.range(10))
    with pytest.warns(UserWarning, match=r"cur_shard=0 and shard_count=2 disagree with the environment's rank 1 of 2"):
        converter.make_numpy_iterator(cur_shard=0, shard_count=2)
    with pytest.warns(UserWarning, match="each process reads the whole dataset") as caught:
        converter.make_torch_dataloader()
    assert caught[0].filename == __file__  # the loader call, not sparkfeed's internals
    assert "pass cur_shard=1, shard_count=2 (hvd.rank(), hvd.size()), or cur_shard='auto'" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converter.make_numpy_iterator(cur_shard=1, shard_count=2)
        converter.make_numpy_iterator(cur_shard="auto", shard_count="auto")
    monkeypatch.setenv("HOROVOD_SIZE", "1")
    monkeypatch.setenv("HOROVOD_RANK", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converter.make_numpy_iterator()  # one process reading everything agrees with a job of one


def _barrier_ranks(converter_blob: bytes):  # runs in the Spark task
    def task(_):
        import pickle

        from sparkfeed.distributed import detect_rank

        found = detect_rank()
        converter = pickle.loads(converter_blob)
        kwargs = {"batch_size": 7, "num_epochs": 1, "cur_shard": "auto", "shard_count": "auto"}
        with converter.make_numpy_iterator(shard_policy="exact", **kwargs) as batches:
            ids = [int(i) for batch in batches for i in batch["id"]]
        yield None if found is None else (found.rank, found.size, found.source), ids

    return task


def test_auto_in_a_spark_barrier_task_reads_the_tasks_shard(spark) -> None:
    converter = make_spark_converter(spark.range(60))
    blob = pickle.dumps(converter)
    rdd = spark.sparkContext.parallelize(range(2), 2)
    barrier = sorted(rdd.barrier().mapPartitions(_barrier_ranks(blob)).collect())
    assert [found for found, _ in barrier] == [
        (0, 2, "Spark's BarrierTaskContext"),
        (1, 2, "Spark's BarrierTaskContext"),
    ]
    assert [len(ids) for _, ids in barrier] == [30, 30] and sorted(i for _, ids in barrier for i in ids) == list(
        range(60)
    )
    ordinary = rdd.mapPartitions(_barrier_ranks(blob)).collect()  # an ordinary task is no rank
    assert [found for found, _ in ordinary] == [None, None]
    assert all(sorted(ids) == list(range(60)) for _, ids in ordinary)


def test_auto_reads_an_initialized_torch_distributed_group(spark, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    blob = tmp_path / "converter.pkl"
    blob.write_bytes(pickle.dumps(make_spark_converter(spark.range(101))))
    outputs = run_gloo_ranks("auto_shard_job.py", str(blob))
    assert [o["before"] for o in outputs] == [None, None]
    assert [o["after"] for o in outputs] == [[0, 2, "torch.distributed"], [1, 2, "torch.distributed"]]
    assert [o["shard"] for o in outputs] == [[0, 2], [1, 2]]
    assert sorted(outputs[0]["ids"] + outputs[1]["ids"]) == list(range(101))
    assert sorted(len(o["ids"]) for o in outputs) == [50, 51]
