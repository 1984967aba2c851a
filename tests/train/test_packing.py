"""Packed micro-batches (one row, position ids restarting) train like padded ones."""

from __future__ import annotations

import json

from phi3v.training.data_order import micro_batches
from phi3v.training.train import train

from .conftest import DATASET, base_run

# relative; bf16 autocast rounds a (1, sum T) row slightly differently from a padded (B, T) batch
# (measured: ~3e-5 over three steps)
LOSS_TOLERANCE = 1e-3


def losses(out_dir):
    return [json.loads(line)["loss"] for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def test_packed_loss_equals_padded_loss(tiny_base, tiny_data, tmp_path):
    results = {}
    for packing in (False, True):
        run = base_run(packing=packing, batch_size=8, per_device_batch_size=4, max_steps=3)
        out = tmp_path / f"packing-{packing}"
        train(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET, out_dir=out,
              checkpoint_dir=tmp_path / f"ckpt-{packing}")
        results[packing] = losses(out)
    for padded, packed in zip(results[False], results[True]):
        assert abs(padded - packed) <= LOSS_TOLERANCE * padded, results


def test_micro_batches_split_one_effective_batch_over_processes():
    run = base_run(batch_size=8, per_device_batch_size=2, seed=3)
    alone = micro_batches(5, num_samples=20, run=run, accumulation=4, rank=0, world_size=1)
    pair = [micro_batches(5, num_samples=20, run=run, accumulation=2, rank=r, world_size=2) for r in (0, 1)]
    assert sum(alone, []) == sum(pair[0] + pair[1], [])  # same samples, same order
    assert all(len(b) == 2 for b in alone)
    # step 5 is in epoch 2 (2 steps an epoch): a new permutation, no sample twice within an epoch
    epoch = [i for s in (4, 5) for b in micro_batches(s, num_samples=20, run=run, accumulation=4, rank=0,
                                                       world_size=1) for i in b]
    assert len(set(epoch)) == 16
