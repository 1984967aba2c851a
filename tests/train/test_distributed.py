"""torchrun: 2 CPU processes over gloo (DDP, and DeepSpeed ZeRO-2) match one process."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from phi3v.launch import launch_command
from phi3v.training.train import train

from .conftest import DATASET, base_run

# relative; same samples and weights, only the order of the gradient sum changes
DDP_LOSS_TOLERANCE = 1e-3
# DeepSpeed holds bf16 weights (fp32 master copy) where a plain run holds fp32 weights under autocast
DEEPSPEED_LOSS_TOLERANCE = 3e-2
RENDEZVOUS_VARIABLES = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}


def train_args(run, base, data, out, ckpt):
    return ["phi3v.training.train", "--run-json", run.to_json(), "--base-model", str(base), "--data-dir", str(data),
            "--dataset", DATASET, "--out-dir", str(out), "--checkpoint-dir", str(ckpt)]


def torchrun(run, base, data, out, ckpt, nproc=2, timeout=480):
    torchrun_bin = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [torchrun_bin, "--standalone", f"--nproc_per_node={nproc}", "-m", *train_args(run, base, data, out, ckpt)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "metrics.json").read_text())


def losses(out_dir):
    return [json.loads(line)["loss"] for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_processes_match_one(tiny_base, tiny_data, tmp_path):
    run = base_run(batch_size=4, per_device_batch_size=1, max_steps=4)
    one = train(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET, out_dir=tmp_path / "one",
                checkpoint_dir=tmp_path / "ckpt-one")
    two = torchrun(run, tiny_base, tiny_data, tmp_path / "two", tmp_path / "ckpt-two")
    assert (one["processes"], one["accumulation_steps"]) == (1, 4)
    assert (two["processes"], two["accumulation_steps"]) == (2, 2)
    for a, b in zip(losses(tmp_path / "one"), losses(tmp_path / "two")):
        assert abs(a - b) <= DDP_LOSS_TOLERANCE * a
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=DDP_LOSS_TOLERANCE)


@pytest.mark.slow
def test_deepspeed_zero2_on_two_cpu_processes(tiny_base, tiny_data, tmp_path):
    pytest.importorskip("deepspeed")
    run = base_run(batch_size=4, per_device_batch_size=1, max_steps=4, deepspeed=True)
    train(dataclasses.replace(run, deepspeed=False), base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET,
                  out_dir=tmp_path / "plain", checkpoint_dir=tmp_path / "ckpt-plain")
    zero2 = torchrun(run, tiny_base, tiny_data, tmp_path / "zero2", tmp_path / "ckpt-zero2")
    assert zero2["deepspeed"] is True and zero2["weights_dtype"] == "bfloat16"
    assert zero2["autocast_dtype"] is None
    for a, b in zip(losses(tmp_path / "plain"), losses(tmp_path / "zero2")):
        assert abs(a - b) <= DEEPSPEED_LOSS_TOLERANCE * a
    assert losses(tmp_path / "zero2")[-1] < losses(tmp_path / "zero2")[0]
    assert (tmp_path / "zero2" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_deepspeed_in_one_process_started_as_plain_python(tiny_base, tiny_data, tmp_path):
    # One process is started without torchrun (phi3v.launch); the trainer makes DeepSpeed's group of one.
    pytest.importorskip("deepspeed")
    run = base_run(batch_size=2, per_device_batch_size=1, max_steps=2, deepspeed=True)
    command = launch_command(train_args(run, tiny_base, tiny_data, tmp_path / "out", tmp_path / "ckpt"),
                             processes_per_node=1)
    assert command[1:3] == ["-m", "phi3v.training.train"]
    env = {key: value for key, value in os.environ.items() if key not in RENDEZVOUS_VARIABLES}
    done = subprocess.run(command, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["deepspeed"], metrics["processes"], metrics["steps"]) == (True, 1, 2)


@pytest.mark.slow
def test_two_processes_train_when_a_micro_batch_has_no_image(tiny_base, tiny_data, tmp_path):
    # Every other sample is text only: some micro-batches leave the vision tower without gradients.
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    train_jsonl = data / f"{DATASET}_train.jsonl"
    records = [json.loads(line) for line in train_jsonl.read_text().splitlines()]
    for record in records[::2]:
        record["conversations"] = [{"user": "Say hello.", "assistant": "hello"}]
    train_jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = base_run(batch_size=2, per_device_batch_size=1, max_steps=6)
    metrics = torchrun(run, tiny_base, data, tmp_path / "out", tmp_path / "ckpt")
    assert metrics["steps"] == 6 and metrics["processes"] == 2
