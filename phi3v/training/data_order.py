"""The samples a training run sees, in order: the training split, the step plan, each optimiser
step's micro-batches and the loader that decodes them.

Data order: a permutation of the training set per epoch from (seed, epoch); optimiser step s takes
the next `batch_size` samples, each process its slice, as `accumulation` micro-batches of
`per_device_batch_size` samples (padded, or packed into one row). Resuming at step s therefore
only needs s: the data position is a pure function of the step.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from phi3v.data.collate import collate_packed, collate_padded
from phi3v.data.dataset import ConversationDataset
from phi3v.errors import UserError
from .run_config import RunConfig

# Encoded training samples a CPU run keeps in memory: the demo's largest set (UCF-101) is 145 MB;
# larger sets (num_crops 16) keep their first samples only, within a job's memory request.
EXAMPLE_CACHE_BYTES = 256 << 20


def training_split(data_dir: Path, dataset_name: str) -> Path:
    """`<data_dir>/<dataset_name>_train.jsonl`, which must exist."""
    train_jsonl = data_dir / f"{dataset_name}_train.jsonl"
    if not train_jsonl.is_file():
        raise UserError(f"{train_jsonl} does not exist — build the dataset {dataset_name!r} first")
    return train_jsonl


def training_set(run: RunConfig, train_jsonl: Path, processor) -> ConversationDataset:
    """The run's training examples; without GPUs this process decodes every sample itself
    (`make_loader`): once, then from memory."""
    cache_bytes = 0 if torch.cuda.is_available() else EXAMPLE_CACHE_BYTES
    return ConversationDataset(train_jsonl, train_jsonl.parent / "images", processor, run.num_crops,
                               run.max_train_samples, train_turns=run.train_turns, seed=run.seed,
                               cache_bytes=cache_bytes)


def step_plan(num_samples: int, run: RunConfig, train_jsonl: Path) -> tuple[int, int]:
    """(optimiser steps per epoch, total optimiser steps); an incomplete last batch is dropped."""
    if num_samples == 0:
        raise UserError(f"{train_jsonl} holds no records: the training split is empty — write the training "
                        "records into it (a custom dataset), or delete it and rerun the workflow to convert the "
                        "dataset again")
    steps_per_epoch = num_samples // run.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"run {run.run!r}: the training split {train_jsonl} has {num_samples} samples, fewer than "
                        f"batch_size={run.batch_size} — lower batch_size or raise max_train_samples")
    total = run.max_steps if run.max_steps is not None else run.epochs * steps_per_epoch
    return steps_per_epoch, total


def micro_batches(step: int, *, num_samples: int, run: RunConfig, accumulation: int, rank: int,
                  world_size: int) -> list[list[int]]:
    """Sample indices of this process's micro-batches for optimiser step `step`."""
    batch, per_device = run.batch_size, run.per_device_batch_size
    epoch, index = divmod(step, num_samples // batch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(run.seed + epoch))
    window = order[index * batch:(index + 1) * batch].tolist()
    share = window[rank * per_device * accumulation:(rank + 1) * per_device * accumulation]
    return [share[i * per_device:(i + 1) * per_device] for i in range(accumulation)]


def make_loader(dataset, run: RunConfig, *, start: int, total: int, accumulation: int, rank: int,
                world_size: int, pad_token_id: int) -> DataLoader:
    """Micro-batches of steps start..total-1 for this process, decoded ahead by worker processes.

    Samples are keyed `(index, epoch)`: a dataset that draws per visit (train_turns one_random)
    seeds its draw with them, so the draw too is a pure function of the step."""
    steps_per_epoch = len(dataset) // run.batch_size
    batches = [[(index, step // steps_per_epoch) for index in b] for step in range(start, total)
               for b in micro_batches(step, num_samples=len(dataset), run=run, accumulation=accumulation,
                                      rank=rank, world_size=world_size)]
    collate = collate_for(run, pad_token_id)
    workers = (run.dataloader_workers if run.dataloader_workers is not None
               else min(4, os.cpu_count() or 1) if torch.cuda.is_available() else 0)
    # Its own generator: starting the iterator (workers' seeds) must not draw from the global RNG,
    # which a resumed run has just restored for dropout. The data itself draws nothing at random.
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(run.seed))


def collate_for(run: RunConfig, pad_token_id: int):
    """One row per micro-batch without padding (packing; under flash attention with the varlen
    kernel's sample boundaries), or a padded (B, T) batch."""
    if run.packing:
        return functools.partial(collate_packed, flash_attention=run.attention == "flash_attention_2")
    return functools.partial(collate_padded, pad_token_id=pad_token_id, mask_pad_id=run.attention_mask == "pad_id")
