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

from dataclasses import dataclass

from .run_config import Strategy

# Dense peak FLOP/s per GPU for the precisions training uses (vendor data sheets, no sparsity).
PEAK_FLOPS = {
    "H100": {"bf16": 989e12, "fp16": 989e12},
    "H200": {"bf16": 989e12, "fp16": 989e12},
    "A100": {"bf16": 312e12, "fp16": 312e12},
    "V100": {"fp16": 125e12},
}


@dataclass(frozen=True)
class ModelShape:
    """The sizes FLOP counting needs, independent of how the model object is built."""

    lm_layers: int
    lm_hidden: int
    lm_intermediate: int
    lm_heads: int
    lm_kv_heads: int
    vocab_size: int
    clip_layers_used: int  # layers up to and including the one whose features are used
    clip_hidden: int
    clip_intermediate: int
    clip_tokens_per_crop: int  # patches + CLS
    projector_in: int  # 4 * clip_hidden after the 2x2 merge
    image_tokens_per_crop: int  # merged tokens a crop contributes (144 at 336 px)

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """Read the sizes off a `Phi3VConfig` (its LM fields and its CLIP `vision_config`)."""
        vision = config.vision_config
        patches_per_side = vision.image_size // vision.patch_size
        return cls(lm_layers=config.num_hidden_layers, lm_hidden=config.hidden_size,
                   lm_intermediate=config.intermediate_size, lm_heads=config.num_attention_heads,
                   lm_kv_heads=config.num_key_value_heads or config.num_attention_heads,
                   vocab_size=config.vocab_size, clip_layers_used=config.vision_layers_used,
                   clip_hidden=vision.hidden_size, clip_intermediate=vision.intermediate_size,
                   clip_tokens_per_crop=patches_per_side**2 + 1, projector_in=4 * vision.hidden_size,
                   image_tokens_per_crop=config.tokens_per_crop_side**2)

    def lm_matmul_params(self) -> int:
        """Weights every LM token multiplies by: attention, MLP, lm_head (not the embedding)."""
        head_dim = self.lm_hidden // self.lm_heads
        qkv = self.lm_hidden * (self.lm_heads + 2 * self.lm_kv_heads) * head_dim
        o_proj = self.lm_hidden * self.lm_hidden
        mlp = 3 * self.lm_hidden * self.lm_intermediate  # gate_up (2x) + down
        return self.lm_layers * (qkv + o_proj + mlp) + self.lm_hidden * self.vocab_size

    def clip_matmul_params(self) -> int:
        """Weights of the CLIP layers that run (q, k, v, out, fc1, fc2)."""
        attn = 4 * self.clip_hidden * self.clip_hidden
        mlp = 2 * self.clip_hidden * self.clip_intermediate
        return self.clip_layers_used * (attn + mlp)

    def projector_params(self) -> int:
        return self.projector_in * self.lm_hidden + self.lm_hidden * self.lm_hidden


def _multipliers(strategy: Strategy) -> tuple[int, int]:
    """(LM multiplier, vision multiplier) of the forward cost under the convention above."""
    trained = 2 if strategy.is_lora else 3  # forward + activation grads (+ weight grads unless LoRA)
    return trained, (trained if strategy.trains_vision else 1)


def forward_flops(shape: ModelShape, *, seq_len: int, num_crops: int) -> tuple[float, float]:
    """Forward FLOPs of one sample: (language model, vision tower + projector).

    seq_len: tokens of the sample (image tokens included); num_crops: real crops of its images.
    """
    lm = 2 * shape.lm_matmul_params() * seq_len
    lm += 0.5 * 4 * shape.lm_layers * seq_len**2 * shape.lm_hidden  # causal: half the score matrix
    clip_tokens = shape.clip_tokens_per_crop
    vision = 2 * shape.clip_matmul_params() * clip_tokens * num_crops
    vision += 4 * shape.clip_layers_used * clip_tokens**2 * shape.clip_hidden * num_crops
    vision += 2 * shape.projector_params() * shape.image_tokens_per_crop * num_crops
    return float(lm), float(vision)


def training_flops_per_sample(shape: ModelShape, *, seq_len: int, num_crops: int, strategy: Strategy) -> float:
    """FLOPs one training sample costs (forward + backward) under the module's convention."""
    lm, vision = forward_flops(shape, seq_len=seq_len, num_crops=num_crops)
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
