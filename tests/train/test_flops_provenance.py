"""FLOP counts against the model's published sizes; provenance records what a run came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from phi3v import lockfile, provenance
from phi3v.configuration_phi3v import RELEASE_CONFIG_FILE, Phi3VConfig
from phi3v.training import flops
from phi3v.errors import UserError
from phi3v.files import write_json_atomic

RELEASE_CONFIG = RELEASE_CONFIG_FILE  # the hub's config.json


@pytest.fixture(scope="module")
def release_shape(tmp_path_factory) -> flops.ModelShape:
    folder = tmp_path_factory.mktemp("release")
    (folder / "config.json").write_text(RELEASE_CONFIG.read_text())
    return flops.ModelShape.from_config(Phi3VConfig.from_pretrained(folder))


def test_lm_and_clip_matmul_sizes_match_the_release(release_shape):
    shape = release_shape
    assert (shape.clip_layers_used, shape.clip_tokens_per_crop, shape.image_tokens_per_crop) == (23, 577, 144)
    lm_norms = 32 * 2 * 3072 + 3072
    assert shape.lm_matmul_params() == 3_821_079_552 - 32064 * 3072 - lm_norms
    assert shape.projector_params() == 22_026_240 - 2 * 3072  # minus the biases


def test_full_finetuning_at_the_speed_shape_is_8e13_per_sample(release_shape):
    # REFERENCE §4: ≈ 8.0e13 at 2560 tokens with CLIP on 17 crops
    per_sample = flops.training_flops_per_sample(release_shape, seq_len=2560, num_crops=17, strategy="full")
    assert per_sample == pytest.approx(8.0e13, rel=0.02)


def test_strategies_count_only_what_they_compute(release_shape):
    shape, kw = release_shape, {"seq_len": 2560, "num_crops": 17}
    lm, vision = flops.forward_flops(shape, **kw)
    assert flops.training_flops_per_sample(shape, strategy="full", **kw) == 3 * lm + 3 * vision
    assert flops.training_flops_per_sample(shape, strategy="frozen_vision", **kw) == 3 * lm + vision
    assert flops.training_flops_per_sample(shape, strategy="lora", **kw) == 2 * lm + 2 * vision
    assert flops.training_flops_per_sample(shape, strategy="qlora", **kw) == 2 * lm + 2 * vision
    with pytest.raises(UserError, match="unknown strategy"):
        flops.training_flops_per_sample(shape, strategy="prefix", **kw)


def test_shape_from_a_config_counts_the_real_modules():
    from phi3v.configuration_phi3v import Phi3VConfig
    from phi3v.modeling_phi3v import Phi3VForCausalLM

    config = Phi3VConfig.tiny(vocab_size=300)
    model = Phi3VForCausalLM.random_init(config)
    model.drop_unused_vision_layers()
    shape = flops.ModelShape.from_config(config)
    lm_linear = sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and "vision_embed_tokens" not in n)
    clip_linear = sum(m.weight.numel() for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and ".img_processor." in n)
    assert shape.lm_matmul_params() == lm_linear
    assert shape.clip_matmul_params() == clip_linear
    assert shape.image_tokens_per_crop == config.tokens_per_crop_side ** 2


def test_mfu_and_peak_table():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert flops.peak_flops("Tesla V100-SXM2-32GB", "bf16") is None  # V100 has no bf16
    assert flops.peak_flops("Tesla V100-SXM2-32GB", "fp16") == 125e12
    assert flops.mfu(8e13, 4.0, num_devices=8, peak_flops_per_device=312e12) == pytest.approx(0.1282, rel=1e-3)
    assert flops.mfu(8e13, 4.0, num_devices=1, peak_flops_per_device=None) is None


def test_provenance_records_code_data_and_run(tmp_path):
    data = tmp_path / "data"
    (data / "images" / "a").mkdir(parents=True)
    (data / "x_train.jsonl").write_text('{"id": 1}\n')
    (data / "images" / "a" / "1.jpg").write_bytes(b"jpeg")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    run = {"run": "lora-bf16-sdpa", "seed": 7}
    record = provenance.collect(run, model_dir=model, data_dir=data)
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    assert record["packages"]["torch"] == torch.__version__.split("+")[0] or record["packages"]["torch"] == torch.__version__
    assert record["seed"] == 7 and record["run"] == run
    assert record["lock"] == {"file": "requirements.lock", "sha256": lockfile.lock_sha256(), "differs": {}}
    assert len(record["lock"]["sha256"]) == 64
    assert record["model"]["revision"] == provenance.sha256_file(model / "config.json")
    before = record["dataset"]["files"]
    (data / "images" / "a" / "1.jpg").write_bytes(b"other")
    after = provenance.dataset_hashes(data)
    assert after["x_train.jsonl"] == before["x_train.jsonl"] and after["images"] != before["images"]
    (model / provenance.MODEL_SOURCE_FILE).write_text(json.dumps({"model": {"id": "org/m", "revision": "abc"}}))
    assert provenance.model_source(model) == {"path": str(model), "id": "org/m", "revision": "abc"}
    write_json_atomic(tmp_path / "p.json", record)
    assert json.loads((tmp_path / "p.json").read_text())["run"] == run
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
