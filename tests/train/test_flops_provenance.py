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
from phi3v.model_sizes import ModelSizes

RELEASE_CONFIG = RELEASE_CONFIG_FILE  # the hub's config.json


@pytest.fixture(scope="module")
def release_sizes(tmp_path_factory) -> ModelSizes:
    """Read as a run reads its model: the hub's config.json through Phi3VConfig."""
    folder = tmp_path_factory.mktemp("release")
    (folder / "config.json").write_text(RELEASE_CONFIG.read_text())
    return ModelSizes.from_config(Phi3VConfig.from_pretrained(folder).to_dict())


def test_lm_and_clip_matmul_sizes_match_the_release(release_sizes):
    sizes = release_sizes
    assert (sizes.clip_layers_used, sizes.clip_tokens_per_crop, sizes.image_tokens_per_crop) == (23, 577, 144)
    lm_norms = 32 * 2 * 3072 + 3072
    assert sizes.lm_matmul_params() == 3_821_079_552 - 32064 * 3072 - lm_norms
    assert sizes.projector_matmul_params() == 22_026_240 - 2 * 3072  # minus the biases
    assert sizes == ModelSizes.release()


def test_full_finetuning_at_the_speed_shape_is_8e13_per_sample(release_sizes):
    # REFERENCE §4: ≈ 8.0e13 at 2560 tokens with CLIP on 17 crops
    per_sample = flops.training_flops_per_sample(release_sizes, seq_len=2560, num_crops=17, strategy="full")
    assert per_sample == pytest.approx(8.0e13, rel=0.02)


def test_strategies_count_only_what_they_compute(release_sizes):
    sizes, kw = release_sizes, {"seq_len": 2560, "num_crops": 17}
    lm, vision = flops.forward_flops(sizes, **kw)
    assert flops.training_flops_per_sample(sizes, strategy="full", **kw) == 3 * lm + 3 * vision
    assert flops.training_flops_per_sample(sizes, strategy="frozen_vision", **kw) == 3 * lm + vision
    assert flops.training_flops_per_sample(sizes, strategy="lora", **kw) == 2 * lm + 2 * vision
    assert flops.training_flops_per_sample(sizes, strategy="qlora", **kw) == 2 * lm + 2 * vision
    with pytest.raises(UserError, match="unknown strategy"):
        flops.training_flops_per_sample(sizes, strategy="prefix", **kw)


def test_sizes_from_a_config_count_the_real_modules():
    from phi3v.configuration_phi3v import Phi3VConfig
    from phi3v.modeling_phi3v import Phi3VForCausalLM

    config = Phi3VConfig.tiny(vocab_size=300)
    model = Phi3VForCausalLM.random_init(config)
    model.drop_unused_vision_layers()
    sizes = ModelSizes.from_config(config.to_dict())
    lm_linear = sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and "vision_embed_tokens" not in n)
    clip_linear = sum(m.weight.numel() for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and ".img_processor." in n)
    assert sizes.lm_matmul_params() == lm_linear
    assert sizes.clip_matmul_params() == clip_linear
    assert sizes.image_tokens_per_crop == config.tokens_per_crop_side ** 2


def test_a_gpu_runs_mfu_counts_the_loaded_models_sizes(monkeypatch):
    """`metrics.json`'s MFU on a GPU: the model's config read into ModelSizes (the release's here)."""
    from phi3v.training.measurements import Throughput, mfu_entry
    from phi3v.training.run_config import RunConfig

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    config = Phi3VConfig.from_dict(json.loads(RELEASE_CONFIG.read_text()))
    run = RunConfig(run="full-bf16-sdpa", dataset="docvqa", strategy="full", precision="bf16", attention="sdpa",
                    batch_size=64, per_device_batch_size=8, learning_rate=5e-6, epochs=2, num_crops=16)
    timed = Throughput(steps=2, images=128, crops=128 * 17, tokens=128 * 2560, seconds=16.0)
    entry = mfu_entry(run, config, torch.device("cuda"), timed, num_devices=8)
    per_sample = flops.training_flops_per_sample(ModelSizes.release(), seq_len=2560, num_crops=17, strategy="full")
    assert entry == {"mfu": pytest.approx(per_sample * 8.0 / (989e12 * 8)), "mfu_reason": None}


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
