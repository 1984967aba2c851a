"""The recipe's model set-up per run: load dtype, what freezes, LoRA targets, QLoRA's bitsandbytes
settings, the evaluation precision (facts: the recipe's `create_model`, `create_lora_config`,
`--freeze_vision_model`, `--use_qlora` and its evaluation after training)."""

from __future__ import annotations

import pytest
import torch

from phi3v.errors import UserError
from phi3v.training.run_config import evaluation_precision
from phi3v.training.model_setup import (LM_LORA_TARGETS, VISION_LORA_TARGETS, build_model, lora_targets,
                                     quantization_config, load_dtype)

from .conftest import base_run


def lora_run(**fields):
    return base_run(strategy="lora", lora_rank=4, lora_alpha=8, **fields)


@pytest.mark.parametrize("fields,dtype", [
    # LoRA under DDP: bf16 with flash attention (sdpa stands in for it), fp32 otherwise
    (dict(precision="bf16", attention="flash_attention_2"), torch.bfloat16),
    (dict(precision="bf16", attention="sdpa"), torch.bfloat16),
    (dict(precision="bf16", attention="eager"), torch.float32),  # the A100 speed rows without flash
    (dict(precision="fp16", attention="eager"), torch.float32),  # fp16 rows: fp32 master weights
])
def test_lora_loads_bf16_with_flash_attention_only(fields, dtype):
    assert load_dtype(lora_run(**fields)) == dtype


def test_full_runs_keep_fp32_master_weights_without_deepspeed():
    assert load_dtype(base_run(precision="bf16", attention="sdpa")) == torch.float32
    assert load_dtype(base_run(precision="fp16", attention="eager", deepspeed=True)) == torch.float32
    assert load_dtype(base_run(precision="bf16", attention="sdpa", deepspeed=True)) == torch.bfloat16


@pytest.mark.parametrize("attention,compute", [("flash_attention_2", torch.bfloat16), ("eager", torch.float16)])
def test_qlora_bitsandbytes_settings_are_the_recipes(attention, compute):
    pytest.importorskip("bitsandbytes")
    config = quantization_config(base_run(strategy="qlora", precision="bf16", attention=attention,
                                          lora_rank=4, lora_alpha=8))
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is False
    assert config.bnb_4bit_compute_dtype == compute  # follows flash attention, not --bf16


def test_lora_targets_the_language_model_only_when_vision_is_frozen():
    assert lora_targets(lora_run()) == LM_LORA_TARGETS + VISION_LORA_TARGETS
    assert lora_targets(lora_run(lora_on_vision=False)) == LM_LORA_TARGETS
    with pytest.raises(UserError, match="lora_on_vision: false only applies to LoRA runs"):
        base_run(lora_on_vision=False)


def test_evaluation_precision_is_the_recipes():
    assert evaluation_precision(lora_run(precision="fp16", attention="eager")) == "fp32"  # reloaded fp32 base
    assert evaluation_precision(lora_run(precision="fp16", attention="sdpa")) == "fp32"  # as load_dtype loads it
    assert evaluation_precision(lora_run(precision="bf16", attention="flash_attention_2")) == "bf16"
    assert evaluation_precision(base_run(precision="fp16", attention="eager")) == "fp16"  # DeepSpeed-cast model


@pytest.mark.parametrize("freeze_embeddings", [True, False])
def test_frozen_vision_freezes_the_token_embeddings_unless_told_not_to(tiny_base, freeze_embeddings):
    model = build_model(base_run(strategy="frozen_vision", freeze_token_embeddings=freeze_embeddings), str(tiny_base))
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert not any(name.startswith("model.vision_embed_tokens.") for name in trainable)
    assert ("model.embed_tokens.weight" in trainable) is not freeze_embeddings
    assert "lm_head.weight" in trainable and "model.layers.0.mlp.down_proj.weight" in trainable


def test_lora_without_vision_adapters(tiny_base):
    model = build_model(lora_run(lora_on_vision=False), str(tiny_base))
    adapted = {name for name, param in model.named_parameters() if param.requires_grad}
    assert adapted and all("lora_" in name for name in adapted)
    assert not any("vision_embed_tokens" in name for name in adapted)


def test_qlora_keeps_unquantised_weights_as_loaded(tiny_base):
    """No prepare_model_for_kbit_training (the recipe never calls it): it would cast these to fp32."""
    pytest.importorskip("bitsandbytes")
    model = build_model(base_run(strategy="qlora", precision="bf16", attention="sdpa", lora_rank=4,
                                 lora_alpha=8), str(tiny_base))
    norms = [param.dtype for name, param in model.named_parameters() if name.endswith("norm.weight")]
    assert norms and set(norms) == {torch.bfloat16}
    assert not model.get_input_embeddings().weight.requires_grad


def test_loader_keys_samples_by_epoch_so_draws_follow_the_step():
    """A resumed run (start > 0) asks for the same (index, epoch) keys the first run would have."""
    from phi3v.training.data_order import make_loader

    run = base_run(batch_size=4, per_device_batch_size=2, max_steps=6)
    dataset = list(range(8))  # 2 steps an epoch
    def keys(start):
        loader = make_loader(dataset, run, start=start, total=6, accumulation=2, rank=0, world_size=1, pad_token_id=0)
        return list(loader.batch_sampler)
    full = keys(0)
    assert [{epoch for _, epoch in batch} for batch in full] == [{0}] * 4 + [{1}] * 4 + [{2}] * 4
    assert keys(3) == full[6:]


@pytest.mark.parametrize("adapter_dtype,expected", [("base", torch.bfloat16), ("fp32", torch.float32)])
def test_lora_adapters_keep_the_base_dtype_as_add_adapter_did(tiny_base, adapter_dtype, expected):
    """The recipe's `add_adapter` (peft 0.11) left adapters in the base's dtype (bf16 rows: bf16);
    current peft's get_peft_model upcasts them unless told not to."""
    model = build_model(lora_run(precision="bf16", attention="sdpa", adapter_dtype=adapter_dtype), str(tiny_base))
    adapters = {param.dtype for name, param in model.named_parameters() if "lora_" in name}
    assert adapters == {expected}


def test_qlora_adapters_stay_fp32_over_4bit_weights(tiny_base):
    """peft 0.11 left an adapter over a 4-bit (uint8) weight in fp32; current peft would use the compute dtype."""
    pytest.importorskip("bitsandbytes")
    model = build_model(base_run(strategy="qlora", precision="fp16", attention="eager", lora_rank=4,
                                 lora_alpha=8), str(tiny_base))
    adapters = {param.dtype for name, param in model.named_parameters() if "lora_" in name}
    assert adapters == {torch.float32}


def test_weight_decay_groups_are_the_recipes_transformers(tiny_base):
    """transformers 4.38-4.43 (the recipe's): decay all but biases and nn.LayerNorm weights, so Phi-3's
    RMSNorm weights, CLIP's class_embedding and the separators are decayed."""
    from phi3v.training.optimizer import make_optimizer

    model = build_model(base_run(), str(tiny_base))
    decay, no_decay = make_optimizer(model, base_run()).param_groups
    frozen = build_model(base_run(strategy="frozen_vision"), str(tiny_base))
    # frozen_vision trains no bias or LayerNorm: one group, none empty (DeepSpeed would drop it)
    assert [len(g["params"]) > 0 for g in make_optimizer(frozen, base_run()).param_groups] == [True]
    names = {id(param): name for name, param in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    clip = "model.vision_embed_tokens.img_processor."
    for name in ("model.norm.weight", "model.layers.0.input_layernorm.weight",
                 "model.vision_embed_tokens.glb_GN", "model.vision_embed_tokens.sub_GN"):
        assert name in decayed, name
    assert any(name.endswith("embeddings.class_embedding") for name in decayed)
    assert any(name.startswith(clip) and name.endswith("layer_norm1.weight") for name in exempt)
    assert all(name.endswith("bias") or "layer_norm" in name or "layrnorm" in name for name in exempt), exempt
    assert decayed | exempt == set(names.values())
