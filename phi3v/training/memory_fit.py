"""Memory-fitted micro-batches: the largest per-device batch, then the fewest checkpointed layers.

A short probe runs forward + backward of the run's first samples at candidate shapes and keeps the
first that fits `memory_budget_gib`. Candidates are the per-device batches that divide the
effective batch over the processes (so accumulation keeps the effective batch exact), largest
first; for the first batch that fits with every decoder layer checkpointed, a bisection finds the
fewest checkpointed layers (memory only grows as fewer layers recompute).

Measured memory: on a GPU the allocator's peak; on a CPU (no allocator statistics) the bytes of
weights, gradients and the tensors autograd saves for backward. What the optimiser step adds does not
exist yet at probe time, so its size is added from the trainable parameters with the memory plan's
arithmetic (`memory_plan.training_state_bytes`: AdamW's moments, and under ZeRO-2 the fp32 master and
gradient partitions, the foreach temporary and the reduce buckets). On a GPU the budget is capped by
what this process can still reach on the card (`usable_card_gib`): other processes' memory counts.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import UserError
from .devices import to_device
from .memory_plan import GIB, candidate_batches, training_state_bytes
from .run_config import RunConfig


@dataclass(frozen=True)
class MicroBatchFit:
    per_device_batch_size: int
    checkpointed_layers: int
    probes: list = field(default_factory=list)  # (batch, checkpointed layers, GiB) of every probe

    def as_dict(self) -> dict:
        return {"per_device_batch_size": self.per_device_batch_size,
                "checkpointed_layers": self.checkpointed_layers,
                "probes": [list(probe) for probe in self.probes]}


def choose_micro_batch(batches: list[int], num_layers: int, measure_gib: Callable[[int, int], float],
                       budget_gib: float) -> MicroBatchFit:
    """The largest batch that fits with every layer checkpointed, then its fewest checkpointed layers."""
    probes = []

    def fits(batch: int, layers: int) -> bool:
        gib = measure_gib(batch, layers)
        probes.append((batch, layers, round(gib, 3) if math.isfinite(gib) else None))
        return gib <= budget_gib

    for batch in batches:
        if not fits(batch, num_layers):
            continue
        low, high = 0, num_layers  # high fits; find the smallest that fits
        while low < high:
            middle = (low + high) // 2
            if fits(batch, middle):
                high = middle
            else:
                low = middle + 1
        return MicroBatchFit(batch, high, probes)
    raise UserError(f"memory_budget_gib={budget_gib}: not even per-device batch {batches[-1]} with all "
                    f"{num_layers} decoder layers checkpointed fits (probes: batch, layers, GiB = {probes}) "
                    "— raise memory_budget_gib or use a smaller num_crops")


def step_state_bytes(model, run: RunConfig, world_size: int) -> int:
    """What the optimiser step holds beyond a forward + backward: state, step temporaries, buckets."""
    params = [p for p in model.parameters() if p.requires_grad]
    element_size = params[0].element_size() if params else 4
    state = training_state_bytes(sum(p.numel() for p in params), world_size, deepspeed=run.deepspeed,
                                 param_bytes=element_size)
    return state["optimizer"] + state["step_temporaries"] + state["buckets"]


def usable_card_gib(device: torch.device) -> float:
    """GiB this process can reach on its GPU: what it holds now plus what the card still has free
    (`torch.cuda.mem_get_info` sees other processes too, e.g. a parent that keeps a model on the card)."""
    free, _total = torch.cuda.mem_get_info(device)
    return (torch.cuda.memory_reserved(device) + free) / GIB


@contextlib.contextmanager
def saved_tensor_bytes(exclude=()):
    """Counts the bytes of distinct storages autograd saves for backward in the block: `[bytes]`.
    Storages of the tensors in `exclude` (the weights, counted on their own) are not counted."""
    seen, total = {tensor.untyped_storage().data_ptr() for tensor in exclude}, [0]

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield total


def probe_step_gib(model, batch: dict, device: torch.device, dtype: torch.dtype, extra_bytes: int) -> float:
    """GiB one forward + backward of `batch` needs (plus `extra_bytes`); inf when it runs out."""
    model.zero_grad(set_to_none=True)
    batch = to_device(batch, device)
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            with torch.autocast("cuda", dtype=dtype):
                model(**batch).loss.backward()
            used = torch.cuda.max_memory_allocated(device)
        else:
            with saved_tensor_bytes(model.parameters()) as saved, torch.autocast(device.type, dtype=dtype):
                loss = model(**batch).loss
            loss.backward()
            used = saved[0] + sum(p.numel() * p.element_size() for p in model.parameters())
            used += sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
                        if p.grad is not None)
    except torch.OutOfMemoryError:
        used = math.inf
    finally:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return (used + extra_bytes) / GIB


def fit_micro_batches(model, run: RunConfig, dataset, collate, device: torch.device, world_size: int,
                      largest: int | None = None) -> MicroBatchFit:
    """Probe the run's first samples on `model` (moved to `device`); the batch and layers that fit."""
    from .optimizations import decoder_layers, set_checkpointed_layers

    model.to(device)
    model.train()
    samples = [dataset[i] for i in range(min(len(dataset), run.batch_size // world_size))]
    extra = step_state_bytes(model, run, world_size)
    budget = run.memory_budget_gib
    if device.type == "cuda":
        budget = min(budget, usable_card_gib(device))

    def measure(batch: int, layers: int) -> float:
        set_checkpointed_layers(model, layers)
        examples = (samples * batch)[:batch]  # fewer samples than the batch: repeat them
        return probe_step_gib(model, collate(examples), device, run.dtype, extra)

    batches = candidate_batches(run.batch_size, world_size, largest)
    fit = choose_micro_batch(batches, len(decoder_layers(model)), measure, budget)
    set_checkpointed_layers(model, fit.checkpointed_layers)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the run's peak is its own, not the probe's
    return fit
