"""Which device this process computes on: GPU `LOCAL_RANK` (torchrun sets it) or the CPU; and
moving a batch there.

Everything that touches CUDA before the Accelerator exists (capability probes, model loading,
the memory probe, random weights) asks `local_device()`, which also makes that GPU the current
one; a bare `torch.device("cuda")` would put every process of a node on GPU 0.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch
from transformers import BatchFeature

from ..errors import UserError


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 for a lone process)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def local_device() -> torch.device:
    """`cuda:LOCAL_RANK`, made the current CUDA device, where CUDA is available; else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise UserError(f"process LOCAL_RANK={index} has no GPU of its own: {count} visible "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}) — start "
                        "at most one process per visible GPU")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def to_device(batch: Mapping, device: torch.device, float_dtype: torch.dtype | None = None) -> BatchFeature:
    """A batch (collated, or the processor's) on `device`, its floating tensors (the pixels) cast to
    `float_dtype` when given; plain values (a packed row's longest sample) stay, None entries go."""
    cast = {} if float_dtype is None else {"dtype": float_dtype}
    present = BatchFeature({name: value for name, value in batch.items() if value is not None})
    return present.to(device, non_blocking=True, **cast)
