"""What the machine or the combination cannot do is refused at start, with the reason."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from phi3v.errors import UserError
from phi3v.training.train import main, train
from phi3v.training import model_setup
from phi3v.training.model_setup import check_run

from .conftest import DATASET, base_run

CPU = torch.device("cpu")


def test_fp16_with_flash_attention_is_refused():
    with pytest.raises(UserError, match="flash_attention_2 does not support fp16"):
        base_run(precision="fp16", attention="flash_attention_2")


def test_flash_attention_without_the_package_is_refused(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(UserError, match="flash-attn package"):
        check_run(base_run(attention="flash_attention_2"), CPU)


def test_flash_attention_on_a_cpu_is_refused(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        check_run(base_run(attention="flash_attention_2"), CPU)


def test_qlora_without_bitsandbytes_is_refused(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(UserError, match="qlora needs 4-bit NF4 weights but bitsandbytes is not installed"):
        check_run(base_run(strategy="qlora", lora_rank=4, lora_alpha=8), CPU)


def test_qlora_where_nf4_fails_is_refused(monkeypatch):
    import bitsandbytes.functional as bnbf

    def broken(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this device")

    monkeypatch.setattr(bnbf, "quantize_4bit", broken)
    with pytest.raises(UserError, match="no 4-bit kernel for this device"):
        check_run(base_run(strategy="qlora", lora_rank=4, lora_alpha=8), CPU)


def test_fp16_where_autocast_is_not_fp16_is_refused(monkeypatch):
    monkeypatch.setattr(model_setup, "_fp16_autocast_works", lambda device: False)
    with pytest.raises(UserError, match="fp16 mixed precision is not available"):
        check_run(base_run(precision="fp16"), CPU)


def test_this_cpu_runs_true_fp16_and_nf4():
    assert model_setup._fp16_autocast_works(CPU)
    assert model_setup._nf4_works(CPU) is None


@pytest.mark.parametrize("key,value", [("strategy", "prefix"), ("precision", "fp32"), ("attention", "flex")])
def test_unknown_choices_are_refused(key, value):
    with pytest.raises(UserError, match=f"{key}={value!r}"):
        base_run(**{key: value})


def test_batch_size_not_divisible_is_refused(tiny_base, tiny_data, tmp_path):
    run = base_run(batch_size=5, per_device_batch_size=2)
    with pytest.raises(UserError, match="batch_size=5 is not divisible"):
        train(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET, out_dir=tmp_path / "o",
              checkpoint_dir=tmp_path / "c")


def test_cli_prints_the_reason_and_exits_2(tiny_base, tiny_data, tmp_path, capsys):
    code = main(["--run-json", base_run(batch_size=64).to_json(), "--base-model", str(tiny_base),
                 "--data-dir", str(tiny_data), "--dataset", DATASET, "--out-dir", str(tmp_path / "o"),
                 "--checkpoint-dir", str(tmp_path / "c")])
    assert code == 2
    assert "fewer than batch_size=64" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_run_fields_are_named(capsys):
    run = base_run().to_dict()
    del run["warmup_steps"]
    assert main(["--run-json", json.dumps(run), "--base-model", "x", "--data-dir", "y", "--dataset", DATASET,
                 "--out-dir", "o", "--checkpoint-dir", "c"]) == 2
    assert "lacks warmup_steps" in capsys.readouterr().err
