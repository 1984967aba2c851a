"""What a training run measures: throughput (images, crops, tokens a second), MFU, peak memory and
the dtypes its weights are held in."""

from __future__ import annotations

import resource
from dataclasses import dataclass

import torch

from phi3v.model_sizes import ModelSizes
from . import flops
from .run_config import RunConfig


@dataclass
class Throughput:
    """What the timed steps processed, summed over processes (the first step is not timed)."""

    steps: int = 0
    images: float = 0.0
    crops: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0

    def add(self, images, crops, tokens, seconds) -> None:
        self.steps += 1
        self.images, self.crops = self.images + images, self.crops + crops
        self.tokens, self.seconds = self.tokens + tokens, self.seconds + seconds

    def per_second(self, amount: float) -> float | None:
        return amount / self.seconds if self.seconds else None


def batch_counts(batch: dict) -> torch.Tensor:
    """(images, crops, non-padding tokens) of a collated batch, as one tensor to reduce."""
    # a batch without images carries pixel_values / image_sizes = None
    images = batch["image_sizes"].shape[0] if batch.get("image_sizes") is not None else 0
    crops = batch["pixel_values"].shape[0] if batch.get("pixel_values") is not None else 0
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    return torch.tensor([images, crops, tokens], dtype=torch.float64)


def mfu_entry(run: RunConfig, model_config, device: torch.device, timed: Throughput, num_devices: int,
              samples_per_s: float | None = None) -> dict:
    """MFU from the measured throughput, or null with the reason when it cannot be known."""
    if device.type != "cuda":
        return {"mfu": None, "mfu_reason": f"no peak FLOP/s known for a {device.type} device"}
    name = torch.cuda.get_device_name(device)
    peak = flops.peak_flops(name, run.precision)
    if peak is None or not timed.seconds:
        return {"mfu": None, "mfu_reason": f"no peak FLOP/s known for {name} in {run.precision}"}
    samples = timed.steps * run.batch_size
    samples_per_s = samples_per_s if samples_per_s is not None else timed.per_second(samples)
    per_sample = flops.training_flops_per_sample(
        ModelSizes.from_config(model_config.to_dict()), seq_len=timed.tokens / samples,
        num_crops=timed.crops / samples, strategy=run.strategy)
    return {"mfu": flops.mfu(per_sample, samples_per_s, num_devices=num_devices,
                             peak_flops_per_device=peak), "mfu_reason": None}


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def dtype_name(model, *, trainable: bool) -> str | None:
    """dtype of the (first) trainable or frozen parameter: what the run actually holds in memory."""
    dtype = next((p.dtype for p in model.parameters() if p.requires_grad == trainable), None)
    return str(dtype).removeprefix("torch.") if dtype is not None else None
