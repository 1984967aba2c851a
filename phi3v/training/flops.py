"""Training FLOP counts for Phi-3.5-vision and model FLOP utilisation (MFU).

Convention (stated once, used everywhere):
- A matmul with N weights over T tokens costs 2*N*T FLOPs forward. Its backward costs 2*N*T for the
  activation gradient (needed wherever gradients must flow *through* a module to reach a trainable
  parameter) plus 2*N*T for the weight gradient (only where the weights train).
- Attention scores/values add 4*T^2*d forward per layer; the language model's is causal, so half of
  it is counted (what fused kernels compute); CLIP's attention is bidirectional and counted in full.
- Embedding look-ups, norms, activations, softmax and LoRA's low-rank matmuls are not counted.
- Per strategy: full-parameter 3x forward where weights train, forward-only where vision is frozen
  (`frozen_vision`: CLIP and the projector 1x, the LM 3x); LoRA/QLoRA 2x forward everywhere
  (activation gradients flow through every layer that holds adapters; the frozen weights get no
  weight gradient). QLoRA's de-quantisation is not counted.
"""

from __future__ import annotations

from phi3v.model_sizes import ModelSizes
from .run_config import Strategy

# Dense peak FLOP/s per GPU for the precisions training uses (vendor data sheets, no sparsity).
PEAK_FLOPS = {
    "H100": {"bf16": 989e12, "fp16": 989e12},
    "H200": {"bf16": 989e12, "fp16": 989e12},
    "A100": {"bf16": 312e12, "fp16": 312e12},
    "V100": {"fp16": 125e12},
}


def _multipliers(strategy: Strategy) -> tuple[int, int]:
    """(LM multiplier, vision multiplier) of the forward cost under the convention above."""
    trained = 2 if strategy.is_lora else 3  # forward + activation grads (+ weight grads unless LoRA)
    return trained, (trained if strategy.trains_vision else 1)


def forward_flops(sizes: ModelSizes, *, seq_len: int, num_crops: int) -> tuple[float, float]:
    """Forward FLOPs of one sample: (language model, vision tower + projector).

    seq_len: tokens of the sample (image tokens included); num_crops: real crops of its images.
    """
    lm = 2 * sizes.lm_matmul_params() * seq_len
    lm += 0.5 * 4 * sizes.layers * seq_len**2 * sizes.hidden  # causal: half the score matrix
    clip_tokens = sizes.clip_tokens_per_crop
    vision = 2 * sizes.clip_matmul_params() * clip_tokens * num_crops
    vision += 4 * sizes.clip_layers_used * clip_tokens**2 * sizes.clip_hidden * num_crops
    vision += 2 * sizes.projector_matmul_params() * sizes.image_tokens_per_crop * num_crops
    return float(lm), float(vision)


def training_flops_per_sample(sizes: ModelSizes, *, seq_len: int, num_crops: int, strategy: Strategy) -> float:
    """FLOPs one training sample costs (forward + backward) under the module's convention."""
    lm, vision = forward_flops(sizes, seq_len=seq_len, num_crops=num_crops)
    lm_mult, vision_mult = _multipliers(Strategy(strategy))
    return lm_mult * lm + vision_mult * vision


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU named like torch reports it ("NVIDIA H100 80GB HBM3"), or None."""
    for key, table in PEAK_FLOPS.items():
        if key in device_name.upper():
            return table.get(precision)
    return None


def mfu(flops_per_sample: float, samples_per_s: float, *, num_devices: int,
        peak_flops_per_device: float | None) -> float | None:
    """Achieved / peak FLOP/s over all devices; None when the peak is unknown (e.g. a CPU)."""
    if not peak_flops_per_device:
        return None
    return flops_per_sample * samples_per_s / (peak_flops_per_device * num_devices)
