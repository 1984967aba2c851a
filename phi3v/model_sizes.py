"""Phi-3.5-vision's sizes read off a config.json mapping, without torch or transformers: parameter counts
per part (language model, CLIP, projector, separators), what each strategy trains, LoRA adapter and NF4
sizes, image-token counts, the crop limit. The memory plan (`phi3v.training.memory_plan`) runs while Snakemake
plans, where importing torch would cost seconds; the model itself (`phi3v.modeling_phi3v`) builds the same shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The release's config.json (microsoft/Phi-3.5-vision-instruct): full-size shapes without the hub.
RELEASE_CONFIG_FILE = Path(__file__).parent / "configs" / "phi35v_config.json"

# The CLIP ViT-L/14 tower at 336 px that `img_processor.model_name` names in the release.
CLIP_VIT_L_14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 768,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}

# The most crops the HD transform may tile one image into (the release's processor; the recipe's scripts assert it).
MAX_NUM_CROPS = 16

NF4_BLOCK = 64  # bitsandbytes' 4-bit block: one fp32 absmax per 64 weights (no double quantisation)


def image_token_count(rows: int, cols: int, tokens_per_side: int) -> int:
    """Image tokens of one image tiled into rows x cols sub-crops, in the HD layout: every sub-crop
    and the global crop (g*g tokens each), one `glb_GN`, and one `sub_GN` per grid row (g + g)."""
    g = tokens_per_side
    return (rows * cols + 1) * g * g + 1 + (rows + 1) * g


def largest_image_grid(num_crops: int, tokens_per_side: int) -> tuple[int, int]:
    """The sub-crop grid (rows, cols), rows * cols <= num_crops, with the most image tokens (the square one)."""
    grids = [(r, c) for r in range(1, num_crops + 1) for c in range(1, num_crops // r + 1)]
    return max(grids, key=lambda grid: image_token_count(*grid, tokens_per_side))


def _linear(inputs: int, outputs: int, bias: bool) -> int:
    return inputs * outputs + (outputs if bias else 0)


@dataclass(frozen=True)
class ModelSizes:
    """The widths and depths of Phi-3.5-vision that memory depends on."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    clip_hidden: int
    clip_intermediate: int
    clip_layers: int
    clip_layers_used: int  # up to the feature layer; the rest is dropped before training
    clip_heads: int
    clip_image_size: int
    clip_patch: int
    clip_channels: int

    @classmethod
    def from_config(cls, config: dict) -> "ModelSizes":
        """From a config.json mapping (the release's layout; `vision_config` only where it is not ViT-L/14-336)."""
        vision = {**CLIP_VIT_L_14_336, **(config.get("vision_config") or {})}
        layer_idx = (config.get("img_processor") or {}).get("layer_idx", -2)
        clip_layers = vision["num_hidden_layers"]
        return cls(vocab=config["vocab_size"], hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                   layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                   kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                   clip_hidden=vision["hidden_size"], clip_intermediate=vision["intermediate_size"],
                   clip_layers=clip_layers,
                   clip_layers_used=layer_idx if layer_idx >= 0 else clip_layers + 1 + layer_idx,
                   clip_heads=vision["num_attention_heads"], clip_image_size=vision["image_size"],
                   clip_patch=vision["patch_size"], clip_channels=vision.get("num_channels", 3))

    @classmethod
    def release(cls) -> "ModelSizes":
        return cls.from_config(json.loads(RELEASE_CONFIG_FILE.read_text(encoding="utf-8")))

    # ---- shapes --------------------------------------------------------------------------------------

    @property
    def tokens_per_crop_side(self) -> int:
        """Image tokens along a crop's side after the 2x2 merge (12 in the release)."""
        return self.clip_image_size // self.clip_patch // 2

    @property
    def clip_tokens_per_crop(self) -> int:
        """Patches + CLS of one crop (577 in the release)."""
        return (self.clip_image_size // self.clip_patch) ** 2 + 1

    @property
    def image_tokens_per_crop(self) -> int:
        """Merged image tokens one crop contributes to the LM (144 in the release)."""
        return self.tokens_per_crop_side ** 2

    def image_tokens(self, num_crops: int) -> tuple[int, int]:
        """(LM tokens, CLIP crops) of the largest image at `num_crops`: (2509, 17) at 16 in the release."""
        rows, cols = largest_image_grid(num_crops, self.tokens_per_crop_side)
        return image_token_count(rows, cols, self.tokens_per_crop_side), rows * cols + 1

    # ---- parameter counts ----------------------------------------------------------------------------

    def lm_linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of one decoder layer's Linear layers (no biases in Phi-3)."""
        head_dim = self.hidden // self.heads
        return [("qkv_proj", self.hidden, (self.heads + 2 * self.kv_heads) * head_dim),
                ("o_proj", self.heads * head_dim, self.hidden),
                ("gate_up_proj", self.hidden, 2 * self.intermediate),
                ("down_proj", self.intermediate, self.hidden)]

    def clip_linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of one CLIP layer's Linear layers (all with biases)."""
        c, i = self.clip_hidden, self.clip_intermediate
        return [("q_proj", c, c), ("k_proj", c, c), ("v_proj", c, c), ("out_proj", c, c), ("fc1", c, i), ("fc2", i, c)]

    def projector_linears(self) -> list[tuple[str, int, int]]:
        return [("img_projection.0", 4 * self.clip_hidden, self.hidden), ("img_projection.2", self.hidden, self.hidden)]

    # ---- weights every token multiplies by (FLOP counts) ---------------------------------------------

    def lm_matmul_params(self) -> int:
        """Weights every LM token multiplies by: attention, MLP, lm_head (not the embedding)."""
        return self.layers * sum(i * o for _, i, o in self.lm_linears()) + self.hidden * self.vocab

    def clip_matmul_params(self) -> int:
        """Weights of the CLIP layers that run (q, k, v, out, fc1, fc2), per patch."""
        return self.clip_layers_used * sum(i * o for _, i, o in self.clip_linears())

    def projector_matmul_params(self) -> int:
        return sum(i * o for _, i, o in self.projector_linears())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_params(self) -> int:
        """Token embeddings, decoder layers (with their two RMSNorms), final norm, untied lm_head."""
        layer = sum(_linear(i, o, False) for _, i, o in self.lm_linears()) + 2 * self.hidden
        return self.embedding_params + self.layers * layer + self.hidden + self.vocab * self.hidden

    @property
    def clip_layer_params(self) -> int:
        return sum(_linear(i, o, True) for _, i, o in self.clip_linears()) + 2 * 2 * self.clip_hidden

    def clip_params(self, layers: int | None = None) -> int:
        """CLIPVisionModel with `layers` encoder layers (None: all, plus post_layernorm)."""
        c = self.clip_hidden
        embeddings = c + self.clip_channels * self.clip_patch**2 * c + self.clip_tokens_per_crop * c
        post = 2 * c if layers is None else 0
        return embeddings + 2 * c + (self.clip_layers if layers is None else layers) * self.clip_layer_params + post

    @property
    def projector_params(self) -> int:
        return sum(_linear(i, o, True) for _, i, o in self.projector_linears())

    @property
    def separator_params(self) -> int:
        return 2 * 4 * self.clip_hidden  # glb_GN and sub_GN

    @property
    def checkpoint_params(self) -> int:
        """Every parameter of the checkpoint (4,146,621,440 in the release)."""
        return self.lm_params + self.clip_params() + self.projector_params + self.separator_params

    @property
    def vision_params(self) -> int:
        """CLIP (up to the feature layer: the rest is dropped before training), projector and separators."""
        return self.clip_params(self.clip_layers_used) + self.projector_params + self.separator_params

    @property
    def training_params(self) -> int:
        """Parameters of the model as it trains (unused CLIP layers dropped)."""
        return self.lm_params + self.vision_params

    def lora_params(self, rank: int, on_vision: bool) -> int:
        """LoRA A and B of every target (`phi3v.training.model_setup.lora_targets`): rank * (in + out) each."""
        targets = self.layers * self.lm_linears() + [("lm_head", self.hidden, self.vocab)]
        if on_vision:
            targets += self.clip_layers_used * self.clip_linears() + self.projector_linears()
        return sum(rank * (i + o) for _, i, o in targets)

    def nf4_params(self) -> int:
        """Weights bitsandbytes stores in 4 bits: every Linear weight but lm_head (biases stay in 16/32 bits)."""
        lm = self.layers * sum(i * o for _, i, o in self.lm_linears())
        clip = self.clip_layers_used * sum(i * o for _, i, o in self.clip_linears())
        return lm + clip + sum(i * o for _, i, o in self.projector_linears())

    def trainable_params(self, strategy: str, *, lora_rank: int | None = None, lora_on_vision: bool = True,
                         freeze_token_embeddings: bool = True) -> int:
        """What a strategy trains (`phi3v.training.model_setup.build_model`)."""
        if strategy == "full":
            return self.training_params
        if strategy == "frozen_vision":
            return self.lm_params - (self.embedding_params if freeze_token_embeddings else 0)
        return self.lora_params(lora_rank, lora_on_vision)
