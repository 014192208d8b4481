"""Run by test_torch.py, once per rank, in processes of their own: DDP training on packed sequences over gloo.

Each rank packs its shard of a pickled converter's token rows and trains a DistributedDataParallel
model. Packed batches are cut by the rows' lengths, so equal shards of rows make different numbers
of them; DDP all-reduces the gradients of every step, so a rank with more batches would hang at its
next step: finishing at all is the check. Prints one JSON line of what this rank saw.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from sparkfeed import Sequence

from helpers import join_gloo_rank, leave_gloo


def main(converter_path: str) -> None:
    rank, world, converter = join_gloo_rank(converter_path)
    model = DistributedDataParallel(torch.nn.EmbeddingBag(64, 1, mode="sum"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches, tokens = 0, 0
    sequence = {"tok": Sequence("pack", seq_len=32)}
    with converter.make_torch_dataloader(
        batch_size=3, num_epochs=2, cur_shard=rank, shard_count=world, seed=7, schema_fields=["tok"], sequence=sequence
    ) as loader:
        for batch in loader:
            optimizer.zero_grad()
            held = batch["tok_segment_ids"] > 0
            out = model(batch["tok"].long() % 64, per_sample_weights=None)
            loss = (out.squeeze(1) - held.sum(1).float()).pow(2).mean()
            loss.backward()  # all-reduce with every other rank
            optimizer.step()
            tokens += int(held.sum())
            batches += 1
    counts = leave_gloo(batches, world)
    print(json.dumps({"rank": rank, "batches": batches, "all_batches": counts, "tokens": tokens}))


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    os._exit(0)  # torch's gloo backend may abort while the interpreter finalizes (see ddp_job.py)
