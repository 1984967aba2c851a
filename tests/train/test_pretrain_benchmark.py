"""The demo base model builder and the speed benchmark, both through the one training loop."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess

import pytest

from phi3v.errors import UserError

from .conftest import DATASET

SPEED = {"dataset": DATASET, "num_crops": 1, "learning_rate": 1e-5, "lora_rank": 64}  # the `speed` section


def row_run(row: dict, *, steps: int, warmup: int):
    """The RunConfig the workflow resolves for a speed row (`phi3v.workflow.matrix.expand_speed_row`)."""
    from phi3v.training.run_config import speed_run

    return speed_run(row, {**SPEED, "steps": steps, "warmup": warmup})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from phi3v.data.sources.pretrain_corpus import write_pretrain_corpus

    folder = tmp_path_factory.mktemp("corpus") / "pretrain"
    write_pretrain_corpus(folder, seed=0, n=24)
    return folder


def test_build_demo_base_writes_a_loadable_trained_model(corpus, tiny_data, tmp_path):
    from phi3v.modeling_phi3v import Phi3VForCausalLM
    from phi3v.training.demo_model import build_demo_base
    from phi3v.processing_phi3v import Phi3VProcessor

    out = tmp_path / "base_model"
    metrics = build_demo_base(corpus, [tiny_data], out, steps=8, seed=0, vocab_size=512)
    log = [json.loads(line) for line in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and log[-1]["loss"] < log[0]["loss"]
    assert metrics["trainable_params"] == metrics["total_params"]
    model = Phi3VForCausalLM.from_pretrained(out)
    processor = Phi3VProcessor.from_pretrained(out)
    assert model.config.vocab_size == 512 and processor.image_processor.crop_size == model.config.crop_size
    assert processor.image_token_id == model.config.image_token_id
    source = json.loads((out / "provenance.json").read_text())
    assert source["model"]["id"] == "phi3v-demo-tiny" and source["pretraining"]["steps"] == 8
    # the tokenizer learned the demo texts: a task word is one piece, not bytes
    assert len(processor.tokenizer.tokenize("yellow")) <= 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build leftovers


def test_build_demo_base_refuses_a_missing_text_folder(corpus, tmp_path):
    from phi3v.training.demo_model import build_demo_base

    with pytest.raises(UserError, match="no \\*.jsonl split"):
        build_demo_base(corpus, [tmp_path], tmp_path / "out", steps=2, seed=0, vocab_size=512)


def test_run_speed_measures_the_training_step(tiny_base, tiny_data, tmp_path):
    from phi3v.training.speed import run_speed

    row = {"row": "lora-sdpa-bf16-1x1", "strategy": "lora", "attention": "sdpa", "precision": "bf16",
           "nodes": 1, "gpus": 1, "effective_batch": 2, "deepspeed": False, "skip_reason": None}
    out_json = tmp_path / "speed" / f"{row['row']}.json"
    out_json.parent.mkdir()
    # Random weights need the model's config and tokenizer only: measure from a folder without weights.
    config_only = tmp_path / "config_only"
    shutil.copytree(tiny_base, config_only, ignore=shutil.ignore_patterns("*.safetensors*"))
    result = run_speed(row["row"], row_run(row, steps=3, warmup=1), base_model=config_only, data_dir=tiny_data,
                       weights="random", warmup=1, out_json=out_json)
    assert json.loads(out_json.read_text()) == result
    assert result["steps_measured"] == 3 and result["img_per_s"] > 0 and result["tokens_per_s"] > 0
    assert result["mfu"] is None and "cpu" in result["mfu_reason"] and result["device"].startswith("cpu")
    # what was measured: one CPU process on this machine, LoRA without DeepSpeed (as the recipe)
    assert (result["gpus"], result["nodes"], result["processes"], result["deepspeed"]) == (0, 1, 1, False)
    assert result["node_names"] == [socket.gethostname()] and result["weights"] == "random"
    assert not [p for p in out_json.parent.iterdir() if p.name.startswith(".")]  # scratch removed
    assert {"row", "strategy", "precision", "attention", "nodes", "gpus", "effective_batch", "img_per_s",
            "tokens_per_s", "peak_mem_gib", "mfu", "device", "weights", "steps_measured"} <= result.keys()
    with pytest.raises(UserError, match="speed.weights"):
        run_speed(row["row"], row_run(row, steps=1, warmup=1), base_model=tiny_base, data_dir=tiny_data,
                  weights="zeros", warmup=1, out_json=out_json)


@pytest.mark.slow
def test_random_weights_are_the_same_every_time(tiny_base, tmp_path):
    from phi3v.training.speed import write_random_weights

    first, second = (write_random_weights(tiny_base, tmp_path / name) for name in ("first", "second"))
    weights = [(folder / "model.safetensors").read_bytes() for folder in (first, second)]
    assert weights[0] == weights[1]


def test_a_speed_row_on_two_processes_starts_through_the_launcher(tiny_base, tiny_data, tmp_path):
    # As the workflow starts it: phi3v.launch -> torchrun (2 CPU processes over gloo) -> phi3v.training.speed
    from phi3v.launch import launcher_command

    row = {"row": "full-sdpa-bf16-1x2", "strategy": "full", "attention": "sdpa", "precision": "bf16",
           "nodes": 1, "gpus": 2, "effective_batch": 4, "skip_reason": None,
           "deepspeed": importlib.util.find_spec("deepspeed") is not None}
    out_json = tmp_path / "speed" / f"{row['row']}.json"
    command = launcher_command(
        ["phi3v.training.speed", "--row", row["row"], "--run-json", row_run(row, steps=2, warmup=1).to_json(),
         "--base-model", str(tiny_base), "--data-dir", str(tiny_data), "--warmup", "1",
         "--out", str(out_json)], nodes=1, processes_per_node=2, gpus=0)
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=480)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "torch.distributed.run --nproc-per-node=2 --standalone" in done.stderr
    result = json.loads(out_json.read_text())
    assert (result["processes"], result["nodes"], result["gpus"], result["steps_measured"]) == (2, 1, 0, 2)
    # a full-parameter row asked to train under DeepSpeed ZeRO-2 does (on CPUs over gloo)
    assert result["deepspeed"] is (importlib.util.find_spec("deepspeed") is not None)
    assert done.stdout.count("result: ") == 1  # printed by the main process only
    assert [p.name for p in out_json.parent.iterdir()] == [out_json.name]  # scratch removed


def test_speed_row_command_line_refuses_a_bad_run(tmp_path, capsys):
    from phi3v.training.speed import main

    row = {"row": "x", "strategy": "full", "attention": "sdpa", "precision": "bf16", "effective_batch": 2,
           "deepspeed": False}
    args = ["--row", "x", "--base-model", str(tmp_path), "--data-dir", str(tmp_path), "--warmup", "1",
            "--out", str(tmp_path / "out.json")]
    incomplete = {key: value for key, value in row_run(row, steps=1, warmup=1).to_dict().items() if key != "epochs"}
    assert main(["--run-json", json.dumps(incomplete), *args]) == 2
    assert "lacks epochs" in capsys.readouterr().err
    assert main(["--run-json", "{row", *args]) == 2
    assert "--run-json: cannot read a run config" in capsys.readouterr().err
    assert main(["--run-json", row_run(row, steps=0, warmup=1).to_json(), *args]) == 2
    assert "speed row 'x': steps=0 and warmup=1 must both be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
