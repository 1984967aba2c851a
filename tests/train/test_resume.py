"""A run killed (SIGKILL) after a checkpoint resumes and ends exactly where an uninterrupted run ends;
a run never resumes another run's checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import ANY

import pytest
import torch
from safetensors.torch import load_file

from phi3v import numerics
from phi3v.training.train import train
from phi3v.training.checkpoint import (FINGERPRINT, TRAINER_STATE, ResumePlan, complete_checkpoints,
                                       latest_checkpoint, save_checkpoint)
from phi3v.training.fingerprint import differences, model_digests, run_fingerprint

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


def test_another_runs_checkpoints_are_set_aside(tiny_base, tiny_data, tmp_path, capsys):
    # the workflow reruns a job whose learning rate changed: its old checkpoints must not be resumed
    old = base_run(strategy="frozen_vision", max_steps=3, checkpoint_every=2)
    new = dataclasses.replace(old, learning_rate=1e-3)
    ckpt = tmp_path / "ckpt"
    run_train(old, tiny_base, tiny_data, tmp_path / "old", ckpt)
    assert latest_checkpoint(ckpt).name == "step-2"  # left behind: the last step writes no checkpoint
    capsys.readouterr()

    run_train(new, tiny_base, tiny_data, tmp_path / "out", ckpt)
    console = capsys.readouterr().out
    assert f"not resuming the checkpoints in {ckpt}" in console and "learning_rate 0.003 -> 0.001" in console
    assert f"moving them to {ckpt}.stale and training from step 0" in console
    assert "resuming from" not in console
    assert [step for step, _ in complete_checkpoints(f"{ckpt}.stale")] == [2]
    fresh = run_train(new, tiny_base, tiny_data, tmp_path / "fresh", tmp_path / "fresh_ckpt")
    assert read_log(tmp_path / "out") == [{**e, **{k: ANY for k in ("img_per_s", "step_s")}}
                                          for e in read_log(tmp_path / "fresh")]
    assert_same_weights(tmp_path / "out", tmp_path / "fresh")

    # the same run again finds its own checkpoint and resumes it
    run_train(new, tiny_base, tiny_data, tmp_path / "again", ckpt)
    assert "resuming from step 2" in capsys.readouterr().out
    assert_same_weights(tmp_path / "again", tmp_path / "fresh")
    assert fresh["final_loss"] == read_log(tmp_path / "again")[-1]["loss"]


def fake_checkpoint(folder, step: int, fingerprint: dict | None):
    (folder / f"step-{step}").mkdir(parents=True)
    if fingerprint is not None:
        (folder / f"step-{step}" / FINGERPRINT).write_text(json.dumps(fingerprint))
    (folder / f"step-{step}" / TRAINER_STATE).write_text(json.dumps({"step": step, "log": []}))


def test_resume_plan(tiny_base, tiny_data, tmp_path):
    def fingerprint(**overrides):
        return run_fingerprint(base_run(**overrides), base_model=tiny_base, processes=1,
                               train_jsonl=tiny_data / f"{DATASET}_train.jsonl")

    current = fingerprint(checkpoint_every=2)
    assert fingerprint(checkpoint_every=5) == current  # when checkpoints are taken does not matter
    assert ResumePlan.of(tmp_path / "none", current).message("r") is None

    fake_checkpoint(tmp_path / "own", 4, current)
    plan = ResumePlan.of(tmp_path / "own", current)
    assert plan.step == 4 and plan.message("r") == f"run 'r': resuming from step 4 (checkpoint {tmp_path}/own/step-4)"

    fake_checkpoint(tmp_path / "old", 4, None)  # written before checkpoints recorded a fingerprint
    (tmp_path / "old.stale").mkdir()  # an older stale set: replaced
    plan = ResumePlan.of(tmp_path / "old", current)
    assert "(it records no fingerprint)" in plan.message("r")
    plan.set_stale_aside()
    assert not (tmp_path / "old").exists() and latest_checkpoint(tmp_path / "old.stale").name == "step-4"

    other = fingerprint(seed=1, max_steps=5)
    other["processes"] = 2
    message = ResumePlan.of(tmp_path / "own", other).message("r")
    assert "(max_steps 12 -> 5; seed 0 -> 1; processes 1 -> 2)" in message


def test_base_model_fingerprint_sees_other_weights_of_the_same_shape(tiny_base, tmp_path):
    """Same architecture, sizes and header, one tensor's values differ: the fingerprint differs."""
    copy = tmp_path / "base"
    shutil.copytree(tiny_base, copy)
    assert model_digests(copy) == model_digests(tiny_base)
    weights = bytearray((copy / "model.safetensors").read_bytes())
    header_size = int.from_bytes(weights[:8], "little")
    name, entry = next(item for item in json.loads(weights[8:8 + header_size]).items() if item[0] != "__metadata__")
    weights[8 + header_size + entry["data_offsets"][1] - 2] ^= 0xFF  # one byte of one tensor's values
    (copy / "model.safetensors").write_bytes(bytes(weights))
    assert differences({"base_model": model_digests(tiny_base)}, {"base_model": model_digests(copy)}) == [
        "base model model.safetensors changed"]


@contextlib.contextmanager
def cpu_threads(threads: int):
    """This process computes on `threads` threads (as a job with `threads: N` does), then as before."""
    before, variable = torch.get_num_threads(), os.environ.get(numerics.THREADS_VARIABLE)
    numerics.set_threads(threads)
    try:
        yield
    finally:
        numerics.set_threads(before)
        if variable is None:
            del os.environ[numerics.THREADS_VARIABLE]
        else:
            os.environ[numerics.THREADS_VARIABLE] = variable


def test_a_checkpoint_of_another_thread_count_or_numerics_mode_is_set_aside(tiny_base, tiny_data, tmp_path,
                                                                             monkeypatch):
    # sums split over 2 threads round differently: resuming a 1-thread checkpoint on 2 threads would
    # give weights that match neither run, so the rerun trains from step 0 and keeps the old set aside
    def fingerprint():
        return run_fingerprint(base_run(), base_model=tiny_base, processes=1,
                               train_jsonl=tiny_data / f"{DATASET}_train.jsonl")

    with cpu_threads(1):
        one_thread = fingerprint()
    fake_checkpoint(tmp_path / "ckpt", 2, one_thread)
    with cpu_threads(1):
        assert ResumePlan.of(tmp_path / "ckpt", fingerprint()).step == 2
    with cpu_threads(2):
        plan = ResumePlan.of(tmp_path / "ckpt", fingerprint())
    assert plan.checkpoint is None
    assert "OMP_NUM_THREADS 1 -> 2; torch_threads 1 -> 2" in plan.message("r")
    assert plan.message("r").endswith(f"moving them to {tmp_path}/ckpt.stale and training from step 0")

    with cpu_threads(1):
        monkeypatch.setenv(numerics.MODE_VARIABLE, numerics.NATIVE)  # the machine's own kernels
        plan = ResumePlan.of(tmp_path / "ckpt", fingerprint())
    assert plan.checkpoint is None and "mode pinned -> native" in plan.message("r")


def saving_accelerator():
    """A real Accelerate state to save: a one-layer model and its optimiser, on the CPU."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
    return accelerator


def test_pruning_removes_what_killed_saves_and_prunes_left(tmp_path):
    ckpt = tmp_path / "ckpt"
    fake_checkpoint(ckpt, 4, {})
    (ckpt / "step-2").mkdir()  # an old prune killed mid-delete: trainer_state.json already gone
    (ckpt / "step-2" / "model.safetensors").write_bytes(b"half")
    (ckpt / ".tmp-step-3").mkdir()  # a save killed before its rename
    (ckpt / ".step-1.deleting").mkdir()  # a prune killed after its rename
    assert latest_checkpoint(ckpt).name == "step-4"  # resuming ignores the incomplete step-2

    accelerator = saving_accelerator()
    for step in (6, 8):
        save_checkpoint(accelerator, ckpt, step, {"step": step, "log": []}, {})
    assert sorted(path.name for path in ckpt.iterdir()) == ["step-6", "step-8"]


def test_a_kill_mid_prune_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    accelerator = saving_accelerator()
    for step in (2, 4):
        save_checkpoint(accelerator, ckpt, step, {"step": step, "log": []}, {})

    rmtree = shutil.rmtree

    def killed_mid_delete(path, *args, **kwargs):  # the process dies while a checkpoint's files go
        if not (Path(path) / TRAINER_STATE).exists():
            return rmtree(path, *args, **kwargs)
        (Path(path) / TRAINER_STATE).unlink()
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(shutil, "rmtree", killed_mid_delete)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(accelerator, ckpt, 6, {"step": 6, "log": []}, {})
    # what is left under a checkpoint's name is whole; the half-deleted one has another name
    assert sorted(path.name for path in ckpt.iterdir()) == [".step-2.deleting", "step-4", "step-6"]
    assert latest_checkpoint(ckpt).name == "step-6"
    save_checkpoint(accelerator, ckpt, 8, {"step": 8, "log": []}, {})
    assert sorted(path.name for path in ckpt.iterdir()) == ["step-6", "step-8"]
