"""RunConfig round-trips through JSON and refuses what the recipe does not allow, naming the key."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from phi3v.errors import UserError
from phi3v.training.run_config import RunConfig, Strategy, precision_dtype

from .conftest import base_run


def test_json_round_trip_keeps_every_field():
    run = base_run(strategy="qlora", lora_rank=8, lora_alpha=16, max_steps=None, checkpoint_every=3)
    data = json.loads(run.to_json())
    assert data["strategy"] == "qlora" and list(run.to_dict()) == list(RunConfig.fields())
    assert RunConfig.from_dict(data) == run
    assert RunConfig.from_dict(data).strategy is Strategy.QLORA


def test_from_dict_names_missing_and_unknown_keys():
    data = base_run().to_dict()
    del data["seed"], data["packing"]
    with pytest.raises(UserError, match="lacks packing, seed"):
        RunConfig.from_dict(data)
    with pytest.raises(UserError, match="unknown key\\(s\\) colour; allowed keys: dataset, run, strategy"):
        RunConfig.from_dict({**base_run().to_dict(), "colour": "red"})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"strategy": "lora"}, "strategy lora needs lora_rank, lora_alpha"),
        ({"strategy": "qlora", "lora_rank": 8}, "strategy qlora needs lora_alpha"),
        ({"strategy": "full", "lora_rank": 8}, "lora_rank only apply to LoRA runs"),
        ({"strategy": "lora", "lora_rank": 8, "lora_alpha": 16, "deepspeed": True},
         "deepspeed: true only applies to full-parameter runs \\(lora runs under plain DDP"),
        ({"precision": "fp16", "attention": "flash_attention_2"}, "flash_attention_2 does not support fp16"),
        ({"strategy": "prefix"}, "strategy='prefix' — choose one of full, frozen_vision, lora, qlora"),
        ({"run": "base"}, "'base' is the model before fine-tuning"),
    ],
)
def test_recipe_rules_refuse_with_the_key_named(fields, message):
    data = {**base_run().to_dict(), **fields}
    with pytest.raises(UserError, match=message):
        RunConfig.from_dict(data)


def test_run_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        base_run().seed = 1


def test_strategy_rules():
    assert [s.value for s in Strategy if s.is_lora] == ["lora", "qlora"]
    assert [s.value for s in Strategy if s.uses_deepspeed] == ["full", "frozen_vision"]
    assert [s.value for s in Strategy if not s.trains_vision] == ["frozen_vision"]
    assert all(s.needs_rank == s.is_lora for s in Strategy)
    assert Strategy("full") == "full" and str(Strategy.QLORA) == "qlora"
    with pytest.raises(UserError, match="unknown strategy 'dpo'"):
        Strategy("dpo")


def test_precision_dtypes():
    assert precision_dtype("bf16") is torch.bfloat16 and precision_dtype("fp16") is torch.float16
    assert base_run(precision="fp16", attention="eager").dtype is torch.float16


def test_schema_and_readme_show_the_run_fields_as_declared():
    """The generated blocks of schemas/config.schema.yaml and README.md equal what RunConfig's fields give;
    after changing a field, `python -m phi3v.training.run_fields` rewrites them."""
    from phi3v.training import run_fields

    assert run_fields.stale_files() == []


def test_the_option_lists_come_from_the_field_declarations():
    from phi3v.training import run_config

    assert {"memory_budget_gib", "checkpointed_layers", "compile_layers", "fused_kernels",
            "frozen_vision_no_grad"} <= set(run_config.OPTION_FIELDS)
    assert run_config.RECIPE_SETTING_FIELDS == ("loss_reduction", "adapter_dtype", "attention_mask")
    assert run_config.ROW_SETTINGS == ("per_device_batch_size", "gradient_checkpointing", "packing",
                                       "memory_budget_gib", "checkpointed_layers", "compile_layers",
                                       "fused_kernels", "frozen_vision_no_grad")
    # what enters the checkpoint fingerprint: the same fields as before the declarations said it
    assert set(RunConfig.fields()) - set(run_config.NOT_TRAJECTORY) == {
        "dataset", "run", "strategy", "precision", "attention", "learning_rate", "epochs", "num_crops",
        "batch_size", "per_device_batch_size", "lora_rank", "lora_alpha", "lora_dropout", "weight_decay",
        "warmup_steps", "max_grad_norm", "gradient_checkpointing", "packing", "max_steps", "max_train_samples",
        "seed", "deepspeed", "train_turns", "freeze_token_embeddings", "lora_on_vision", "loss_reduction",
        "adapter_dtype", "attention_mask", "memory_budget_gib", "checkpointed_layers", "compile_layers",
        "fused_kernels", "frozen_vision_no_grad"}


def test_generated_blocks_refuse_lost_markers(tmp_path):
    from phi3v.training import run_fields

    with pytest.raises(UserError, match="expected one line `# BEGIN run_fields"):
        run_fields.replace_block("no markers\n", "run_fields", "#", [], tmp_path / "x.yaml")
