"""Small model folders for tests and the offline demo, written by key name in the release's checkpoint layout.

The layout is spelled out here on its own (not derived from the model's modules), so loading is checked against
the published key names rather than against `save_pretrained`.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from .configuration_phi3v import Phi3VConfig

HUB_ONLY_CONFIG_KEYS = {
    "_name_or_path": "Phi-3.5-vision-instruct",
    "_attn_implementation": "flash_attention_2",
    "auto_map": {
        "AutoConfig": "configuration_phi3_v.Phi3VConfig",
        "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
    },
}


def official_key_shapes(config: Phi3VConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Phi-3.5-vision checkpoint, by its published name, with its shape."""
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = hidden // config.num_attention_heads
    qkv_rows = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        shapes[layer + "self_attn.qkv_proj.weight"] = (qkv_rows, hidden)
        shapes[layer + "self_attn.o_proj.weight"] = (hidden, config.num_attention_heads * head_dim)
        shapes[layer + "mlp.gate_up_proj.weight"] = (2 * inter, hidden)
        shapes[layer + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[layer + "input_layernorm.weight"] = (hidden,)
        shapes[layer + "post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)

    vision = config.vision_config
    width, clip_inter, patch = vision.hidden_size, vision.intermediate_size, vision.patch_size
    clip = "model.vision_embed_tokens.img_processor.vision_model."
    shapes[clip + "embeddings.class_embedding"] = (width,)
    shapes[clip + "embeddings.patch_embedding.weight"] = (width, vision.num_channels, patch, patch)
    shapes[clip + "embeddings.position_embedding.weight"] = ((vision.image_size // patch) ** 2 + 1, width)
    shapes[clip + "pre_layrnorm.weight"] = shapes[clip + "pre_layrnorm.bias"] = (width,)
    for i in range(vision.num_hidden_layers):
        layer = f"{clip}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{layer}self_attn.{proj}.weight"] = (width, width)
            shapes[f"{layer}self_attn.{proj}.bias"] = (width,)
        shapes[layer + "layer_norm1.weight"] = shapes[layer + "layer_norm1.bias"] = (width,)
        shapes[layer + "mlp.fc1.weight"] = (clip_inter, width)
        shapes[layer + "mlp.fc1.bias"] = (clip_inter,)
        shapes[layer + "mlp.fc2.weight"] = (width, clip_inter)
        shapes[layer + "mlp.fc2.bias"] = (width,)
        shapes[layer + "layer_norm2.weight"] = shapes[layer + "layer_norm2.bias"] = (width,)
    shapes[clip + "post_layernorm.weight"] = shapes[clip + "post_layernorm.bias"] = (width,)

    embed = "model.vision_embed_tokens."
    merged = 4 * width
    shapes[embed + "img_projection.0.weight"] = (hidden, merged)
    shapes[embed + "img_projection.0.bias"] = (hidden,)
    shapes[embed + "img_projection.2.weight"] = (hidden, hidden)
    shapes[embed + "img_projection.2.bias"] = (hidden,)
    shapes[embed + "glb_GN"] = (1, 1, merged)
    shapes[embed + "sub_GN"] = (1, 1, 1, merged)
    return shapes


def random_official_weights(config: Phi3VConfig, seed: int = 0,
                            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random tensors for every published key; norms near 1, everything else (separators too) small."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in official_key_shapes(config).items():
        values = torch.randn(shape, generator=generator)
        is_norm_scale = ("norm" in name or "layrnorm" in name) and name.endswith("weight")
        weights[name] = (1.0 + 0.1 * values if is_norm_scale else 0.02 * values).to(dtype)
    return weights


def write_official_checkpoint(folder: str | os.PathLike, config: Phi3VConfig, seed: int = 0,
                              shard_size: int | None = None, dtype: torch.dtype = torch.float32) -> list[str]:
    """Write config.json (with the hub's extra keys) and random weights in the release's layout.

    With `shard_size` (bytes), tensors go into `model-0000k-of-0000n.safetensors` files of at most that size plus
    `model.safetensors.index.json`, as the hub stores big checkpoints. Returns the written weight file names.
    """
    os.makedirs(folder, exist_ok=True)
    hub_config = {**config.to_dict(), **HUB_ONLY_CONFIG_KEYS, "architectures": ["Phi3VForCausalLM"]}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hub_config, f, indent=2, sort_keys=True)

    weights = random_official_weights(config, seed, dtype)
    if shard_size is None:
        save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]

    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in weights.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > shard_size:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += size
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(folder, name), metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
        "weight_map": {key: name for name, shard in zip(names, shards) for key in shard},
    }
    with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return names
