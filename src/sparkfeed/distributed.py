"""Which shard this process is: ``cur_shard="auto"`` / ``shard_count="auto"``, and the rank check.

Distributed training launchers say each process's rank in one of a few places: an initialized
``torch.distributed`` process group, the environment variables of Horovod, Open MPI and PMI
(MPICH, Intel MPI, Slurm's PMI), or Spark's ``BarrierTaskContext`` in a barrier task (as
``TorchDistributor`` and ``horovod.spark`` start them). ``"auto"`` reads the first of these that
is there, so one script runs alone (reading everything) and on every rank (reading its shard).

Like Petastorm, a loader whose explicit ``cur_shard``/``shard_count`` disagree with the rank
variables warns: each rank then reads another shard than its rank, or all of them the whole
dataset, which is rarely meant and costs an epoch to notice.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Mapping

RANK_VARIABLES: tuple[tuple[str, str], ...] = (
    ("HOROVOD_RANK", "HOROVOD_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
)
"""The (rank, size) environment variables Petastorm checks, in the order it checks them."""

LAUNCHED_VARIABLES: tuple[tuple[str, str], ...] = (
    ("RANK", "WORLD_SIZE"),
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
)
"""What torchrun (and TorchDistributor, Lightning, accelerate) set before the process group
exists, and what Slurm's ``srun`` sets in each task of a step.

Not rank sources for ``"auto"``: torchrun's processes take the group's rank, and a Slurm task
is one rank only where nothing starts several processes in it (``srun`` of ``torchrun`` starts
one task a node, its ``SLURM_PROCID`` the node's). But where they say a job of several processes
and nothing else gave a rank, ``"auto"`` is refused rather than read everything on every rank.
(A batch script's own ``SLURM_NTASKS`` is not read: the script is one process, whatever the
allocation holds, and ``SLURM_STEP_NUM_TASKS`` is set only inside an ``srun`` step.)
"""

AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Rank:
    """A process's place in a distributed job.

    Attributes:
        rank: Its index, in ``[0, size)``.
        size: How many processes share the job.
        source: Where it was read, for messages (``"torch.distributed"``, ``"HOROVOD_RANK/HOROVOD_SIZE"``).
    """

    rank: int
    size: int
    source: str


def environment_rank(
    environ: Mapping[str, str] | None = None, pairs: tuple[tuple[str, str], ...] = RANK_VARIABLES
) -> Rank | None:
    """The rank in the first pair of :data:`RANK_VARIABLES` that is set, as Petastorm reads them.

    A pair with only one of its variables set ends the search with None, as in Petastorm: such
    an environment is not a launcher's, and guessing the other half would be worse. Values that
    are not a valid rank (not integers, or a rank outside ``[0, size)``) count as none.
    ``pairs`` are the variables to read, :data:`RANK_VARIABLES` unless given.
    """
    env = os.environ if environ is None else environ
    for rank_name, size_name in pairs:
        rank, size = env.get(rank_name), env.get(size_name)
        if rank is None and size is None:
            continue
        if rank is None or size is None:
            return None
        parsed = _count(rank), _count(size)
        if parsed[0] is None or parsed[1] is None or not parsed[0] < parsed[1]:
            return None
        return Rank(parsed[0], parsed[1], f"{rank_name}/{size_name}")
    return None


def _count(value: str) -> int | None:
    """A launcher's decimal count, else None: ``int()`` would also take ``"1_0"`` (ten) and ``"-1"``."""
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() else None


LOCAL_VARIABLES: tuple[str, ...] = ("LOCAL_RANK", "LOCAL_WORLD_SIZE")
"""What torchrun, accelerate and DeepSpeed set for a process's place on its node: a rank other than
0 (or a node of several processes) says a job of several processes, whose global rank they are not."""


def unreadable_rank_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The launch variables that are set but say no rank: half a pair, not counts, a rank out of range.

    ``"auto"`` refuses these rather than read everything: such a process is one of a launched job
    whose rank could not be read, and each of its ranks would read the whole dataset in silence.
    Slurm's ``SLURM_PROCID`` alone is no problem: a batch script has it, outside any step.
    """
    env = os.environ if environ is None else environ
    problems = []
    for rank_name, size_name in (*RANK_VARIABLES, *LAUNCHED_VARIABLES):
        rank, size = env.get(rank_name), env.get(size_name)
        if rank is None and size is None:
            continue
        if rank is None or size is None:
            present, absent = (rank_name, size_name) if size is None else (size_name, rank_name)
            if present != "SLURM_PROCID":
                problems.append(f"{present}={env[present]!r} is set but {absent} is not")
            continue
        if environment_rank(env, pairs=((rank_name, size_name),)) is None:
            problems.append(
                f"{rank_name}={rank!r}, {size_name}={size!r} is no rank: both must be integers, "
                f"0 <= {rank_name} < {size_name}"
            )
    local = {name: env[name] for name in LOCAL_VARIABLES if name in env}
    if local and all(name not in env for name in LAUNCHED_VARIABLES[0]):
        local_rank, local_size = _count(local.get("LOCAL_RANK", "0")), _count(local.get("LOCAL_WORLD_SIZE", "1"))
        if local_rank is None or local_size is None or local_rank > 0 or local_size > 1:
            problems.append(
                "/".join(LOCAL_VARIABLES)
                + " ("
                + ", ".join(f"{name}={value!r}" for name, value in local.items())
                + ") name a process of a launched job, but RANK and WORLD_SIZE are not set"
            )
    return problems


def torch_rank() -> Rank | None:
    """The rank of an initialized ``torch.distributed`` default process group, else None.

    torch is not imported for this: a process that has not imported ``torch.distributed`` has
    no process group.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return Rank(int(dist.get_rank()), int(dist.get_world_size()), "torch.distributed")


def barrier_rank() -> Rank | None:
    """The partition and task count of the Spark barrier task this runs in, else None.

    A Python worker of a barrier stage holds a ``BarrierTaskContext`` (Spark resets it after
    each task, so a reused worker does not keep a stale one); an ordinary task, the driver and
    a process that never imported pyspark have none.
    """
    module = sys.modules.get("pyspark.taskcontext")
    if module is None:
        return None
    context = module.TaskContext.get()
    if not isinstance(context, module.BarrierTaskContext):
        return None
    return Rank(int(context.partitionId()), len(context.getTaskInfos()), "Spark's BarrierTaskContext")


def detect_rank() -> Rank | None:
    """This process's rank: torch.distributed, then the rank variables, then a Spark barrier task.

    An initialized process group comes first because it is what the training loop's collectives
    use; the variables are set by launchers before any group exists.
    """
    return torch_rank() or environment_rank() or barrier_rank()


def resolve_shards(cur_shard: object, shard_count: object) -> tuple[object, object]:
    """``cur_shard``/``shard_count`` with ``"auto"`` replaced by the detected rank and size.

    Where no rank is found, ``"auto"`` for both means unsharded (None, None): a single process
    reads everything. Other values pass through unchanged, to be validated by the options.

    Raises:
        ValueError: Only one of them is ``"auto"`` and no rank was found to fill it in.
    """
    if cur_shard != AUTO and shard_count != AUTO:
        return cur_shard, shard_count
    found = detect_rank()
    if found is None:
        for pair in LAUNCHED_VARIABLES:
            launched = environment_rank(pairs=(pair,))
            if launched is not None and launched.size > 1:
                raise ValueError(
                    f"cur_shard={cur_shard!r}, shard_count={shard_count!r}: {launched.source} say rank "
                    f"{launched.rank} of {launched.size}, but no torch.distributed process group is initialized, "
                    "so 'auto' has no rank to take and every process would read the whole dataset: call "
                    "torch.distributed.init_process_group() before making the loader, or pass "
                    f"cur_shard={launched.rank}, shard_count={launched.size} if each of those is one rank"
                )
        unreadable = unreadable_rank_variables()
        if unreadable:
            raise ValueError(
                f"cur_shard={cur_shard!r}, shard_count={shard_count!r}: 'auto' found no rank it can trust: "
                + "; ".join(unreadable)
                + ". This process looks like one of a launched job, and reading the whole dataset on every rank "
                "would repeat each row once per rank: fix the launcher's variables, initialize torch.distributed "
                "first, or pass cur_shard and shard_count as integers"
            )
        if cur_shard == AUTO and shard_count == AUTO:
            return None, None
        raise ValueError(
            f"cur_shard={cur_shard!r}, shard_count={shard_count!r}: 'auto' found no rank (no initialized "
            "torch.distributed group, none of the variables "
            f"{', '.join('/'.join(pair) for pair in RANK_VARIABLES)}, no Spark barrier task); "
            "pass both as integers, or both as 'auto'"
        )
    return (found.rank if cur_shard == AUTO else cur_shard), (found.size if shard_count == AUTO else shard_count)


def check_rank_variables(cur_shard: int | None, shard_count: int | None) -> None:
    """Warns, as Petastorm does, when the shard disagrees with the Horovod/MPI/PMI rank variables.

    An unsharded loader agrees with a job of one process; in a larger job every rank would then
    read the whole dataset, which the warning says too.
    """
    found = environment_rank()
    if found is None:
        return
    given = (0, 1) if shard_count is None else (cur_shard, shard_count)
    if given == (found.rank, found.size):
        return
    warnings.warn(
        f"cur_shard={cur_shard!r} and shard_count={shard_count!r} disagree with the environment's rank "
        f"{found.rank} of {found.size} ({found.source}): each process reads "
        + ("the whole dataset" if shard_count is None else f"shard {cur_shard} of {shard_count}")
        + f". To train each rank on its own shard, pass cur_shard={found.rank}, shard_count={found.size} "
        "(hvd.rank(), hvd.size()), or cur_shard='auto', shard_count='auto'",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning name the user's line: the first frame outside sparkfeed.

    Loaders reach their checks through a different number of sparkfeed frames each (a
    decorator, the converter, the options), so a fixed level would point into sparkfeed.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1  # the frame calling warnings.warn is level 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level
