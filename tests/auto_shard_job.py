"""Run by test_distributed.py, once per rank, in processes of their own: "auto" shards from torch.distributed.

Each rank joins a gloo process group and reads a pickled converter with ``cur_shard="auto"``,
``shard_count="auto"``. Prints one JSON line: what sparkfeed detected before and after the group
existed, the shard the loader took, and the ids it read.
"""

from __future__ import annotations

import json
import os
import pickle
import sys

import torch.distributed as dist

from sparkfeed.distributed import detect_rank


def main(converter_path: str) -> None:
    before = detect_rank()  # RANK/WORLD_SIZE are torchrun's, which "auto" does not read: no group yet
    dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    after = detect_rank()
    with open(converter_path, "rb") as handle:
        converter = pickle.load(handle)
    with converter.make_torch_dataloader(
        batch_size=16, num_epochs=1, cur_shard="auto", shard_count="auto", shard_policy="exact"
    ) as loader:
        ids = [int(i) for batch in loader for i in batch["id"]]
        state = loader.state_dict()
    dist.barrier()
    dist.destroy_process_group()
    print(
        json.dumps(
            {
                "before": None if before is None else [before.rank, before.size, before.source],
                "after": None if after is None else [after.rank, after.size, after.source],
                "shard": [state["cur_shard"], state["shard_count"]],
                "ids": ids,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    os._exit(0)  # torch's gloo backend may abort while the interpreter finalizes (see ddp_job.py)
