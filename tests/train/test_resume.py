"""A run killed (SIGKILL) after a checkpoint resumes and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from phi3v.training.train import train
from phi3v.training.checkpoint import complete_checkpoints, latest_checkpoint

from .conftest import DATASET, base_run

KILL_TIMEOUT_S = 120


def cli(run, base, data, out, ckpt) -> list[str]:
    return [sys.executable, "-m", "phi3v.training.train", "--run-json", run.to_json(), "--base-model", str(base),
            "--data-dir", str(data), "--dataset", DATASET, "--out-dir", str(out), "--checkpoint-dir", str(ckpt)]


def kill_after_checkpoint(run, base, data, out, ckpt, step: int) -> None:
    """Start the run in a process and SIGKILL it once a checkpoint at `step` or later is complete."""
    process = subprocess.Popen(cli(run, base, data, out, ckpt), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not any(done >= step for done, _ in complete_checkpoints(ckpt)):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()  # it really died mid-run


def run_train(run, base, data, out, ckpt) -> dict:
    return train(run, base_model=base, data_dir=data, dataset_name=DATASET, out_dir=out, checkpoint_dir=ckpt)


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def assert_same_weights(out_a, out_b, file: str = "model/model.safetensors") -> None:
    a, b = load_file(str(out_a / file)), load_file(str(out_b / file))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_resumes_to_the_same_result(tiny_base, tiny_data, tmp_path):
    # fp16: the grad scaler's state must come back too; 2 micro-batches a step: accumulation resumes aligned
    run = base_run(strategy="frozen_vision", precision="fp16", max_steps=10, checkpoint_every=2)
    kill_after = random.Random(os.getpid()).choice([2, 4, 6])
    kill_after_checkpoint(run, tiny_base, tiny_data, tmp_path / "out", tmp_path / "ckpt", kill_after)
    resumed_from = latest_checkpoint(tmp_path / "ckpt")

    resumed = run_train(run, tiny_base, tiny_data, tmp_path / "out", tmp_path / "ckpt")
    straight = run_train(run, tiny_base, tiny_data, tmp_path / "straight", tmp_path / "straight_ckpt")

    # tolerance: none; CPU kernels are deterministic and every state (weights, AdamW moments,
    # schedule, grad scaler, RNG, data position) is restored exactly
    assert resumed["final_loss"] == straight["final_loss"]
    assert_same_weights(tmp_path / "out", tmp_path / "straight")
    log, straight_log = read_log(tmp_path / "out"), read_log(tmp_path / "straight")
    assert [e["step"] for e in log] == list(range(1, 11))
    assert [e["loss"] for e in log] == [e["loss"] for e in straight_log]
    assert resumed_from.name in {f"step-{n}" for n in range(kill_after, 10, 2)}
    # only complete checkpoints count and the newest two are kept
    assert [step for step, _ in complete_checkpoints(tmp_path / "straight_ckpt")] == [6, 8]


def test_resume_with_dropout_is_exact(tiny_base, tiny_data, tmp_path):
    # dropout draws from the RNG every step: the resumed run must continue the very same stream
    run = base_run(strategy="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.1, learning_rate=1e-2,
                   max_steps=4, checkpoint_every=2)
    kill_after_checkpoint(run, tiny_base, tiny_data, tmp_path / "out", tmp_path / "ckpt", 2)
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-2"

    run_train(run, tiny_base, tiny_data, tmp_path / "out", tmp_path / "ckpt")
    run_train(run, tiny_base, tiny_data, tmp_path / "straight", tmp_path / "straight_ckpt")

    assert [e["loss"] for e in read_log(tmp_path / "out")] == [e["loss"] for e in read_log(tmp_path / "straight")]
    assert_same_weights(tmp_path / "out", tmp_path / "straight", "adapter/adapter_model.safetensors")
    assert_same_weights(tmp_path / "out", tmp_path / "straight")
