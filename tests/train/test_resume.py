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


def test_killed_run_resumes_to_the_same_result(tiny_base, tiny_data, tmp_path):
    # fp16: the grad scaler's state must come back too; 2 micro-batches a step: accumulation resumes aligned
    run = base_run(strategy="frozen_vision", precision="fp16", max_steps=10, checkpoint_every=2)
    kill_after = random.Random(os.getpid()).choice([2, 4, 6])

    process = subprocess.Popen(cli(run, tiny_base, tiny_data, tmp_path / "out", tmp_path / "ckpt"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not any(step >= kill_after for step, _ in complete_checkpoints(tmp_path / "ckpt")):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "out" / "metrics.json").exists()  # it really died mid-run
    resumed_from = latest_checkpoint(tmp_path / "ckpt")

    resumed = train(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET,
                    out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")
    straight = train(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET,
                     out_dir=tmp_path / "straight", checkpoint_dir=tmp_path / "straight_ckpt")

    # tolerance: none; CPU kernels are deterministic and every state (weights, AdamW moments,
    # schedule, grad scaler, RNG, data position) is restored exactly
    assert resumed["final_loss"] == straight["final_loss"]
    a, b = load_file(str(tmp_path / "out/model/model.safetensors")), load_file(str(tmp_path / "straight/model/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "out/train_log.jsonl").read_text().splitlines()]
    straight_log = [json.loads(line) for line in (tmp_path / "straight/train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 11))
    assert [e["loss"] for e in log] == [e["loss"] for e in straight_log]
    assert resumed_from.name in {f"step-{n}" for n in range(kill_after, 10, 2)}
    # only complete checkpoints count and the newest two are kept
    assert [step for step, _ in complete_checkpoints(tmp_path / "straight_ckpt")] == [6, 8]
