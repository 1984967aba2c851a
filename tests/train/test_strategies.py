"""Each strategy x precision the CPU runs: loss falls, the right parameters train, frozen ones stay put."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from phi3v.training.train import train
from phi3v.training.model_setup import LM_LORA_TARGETS, VISION_LORA_TARGETS, VISION_PREFIX

from .conftest import DATASET, base_run

CASES = [("full", "bf16"), ("frozen_vision", "fp16"), ("lora", "bf16"), ("qlora", "fp16")]
CHECKPOINTED = {"frozen_vision", "qlora"}  # gradient checkpointing (non-reentrant) on these


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def lora_parameter_count(base: dict, rank: int, used_clip_layers: int) -> int:
    """r * (in + out) for every targeted Linear the run keeps (CLIP layers past the feature layer dropped)."""
    count = 0
    for key, tensor in base.items():
        if not key.endswith(".weight") or tensor.ndim != 2:
            continue
        module = key.removesuffix(".weight")
        if not any(module == t or module.endswith("." + t) for t in LM_LORA_TARGETS + VISION_LORA_TARGETS):
            continue
        if ".encoder.layers." in module and int(module.split(".encoder.layers.")[1].split(".")[0]) >= used_clip_layers:
            continue
        count += rank * (tensor.shape[0] + tensor.shape[1])
    return count


@pytest.mark.parametrize("strategy,precision", CASES)
def test_strategy_trains_what_it_should(strategy, precision, tiny_base, tiny_data, tmp_path):
    run = base_run(strategy=strategy, precision=precision, max_steps=6, learning_rate=5e-3,
                   gradient_checkpointing=strategy in CHECKPOINTED,
                   lora_rank=8 if "lora" in strategy else None, lora_alpha=16 if "lora" in strategy else None)
    metrics = train(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET,
                    out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 7))
    assert log[-1]["loss"] < log[0]["loss"] - 0.3, [entry["loss"] for entry in log]
    assert metrics["autocast_dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[precision]

    base, trained = weights(tiny_base), weights(tmp_path / "out" / "model")
    assert trained.keys() == base.keys()  # official layout, every CLIP layer back
    vision = [k for k in base if k.startswith(VISION_PREFIX)]
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    if strategy == "full":
        assert "model.embed_tokens.weight" in changed  # the LM, its token embeddings included, trains
    if strategy == "frozen_vision":  # the recipe's freeze reaches the shared token embeddings too
        frozen = set(vision) | {"model.embed_tokens.weight"}
        assert not changed & frozen and "model.layers.0.self_attn.qkv_proj.weight" in changed
        assert metrics["trainable_params"] == sum(v.numel() for k, v in base.items() if k not in frozen)
    if strategy == "full":
        assert "model.vision_embed_tokens.img_projection.0.weight" in changed
    if strategy in ("lora", "qlora"):
        assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
        # merged into a fresh full-precision base: norms and embeddings are the base's, targets moved
        assert torch.equal(base["model.norm.weight"], trained["model.norm.weight"])
        assert "model.layers.0.self_attn.qkv_proj.weight" in changed
        config = json.loads((tiny_base / "config.json").read_text())
        used = config["vision_config"]["num_hidden_layers"] - 1
        assert metrics["trainable_params"] == lora_parameter_count(base, 8, used)
    if strategy == "full":
        assert metrics["trainable_params"] == metrics["total_params"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["final_loss"] == log[-1]["loss"]
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["run"] == run.to_dict() and provenance["precision"]["autocast_dtype"] == metrics["autocast_dtype"]
