"""`report_to`: accelerate's trackers receive the run config and every train_log.jsonl line; off by default."""

from __future__ import annotations

import json

import pytest

from phi3v.errors import UserError
from phi3v.training import trackers
from phi3v.training.run_config import RunConfig
from phi3v.training.train import train

from .conftest import DATASET, base_run

LOGGED = ("epoch", "loss", "lr", "tokens", "img_per_s", "step_s")  # every train_log.jsonl value but the step


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the TensorBoard event files in `folder` (hparams live in a subfolder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_gets_every_train_log_value(tiny_base, tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    run = base_run(max_steps=3, report_to=["tensorboard"])
    train(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET, out_dir=tmp_path / "out",
          checkpoint_dir=tmp_path / "ckpt")
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    tracker_dir = tmp_path / "out" / "trackers" / trackers.project_name(run)
    scalars = tensorboard_scalars(tracker_dir)
    assert set(scalars) == set(LOGGED)
    for key in LOGGED:
        assert [step for step, _ in scalars[key]] == [entry["step"] for entry in log]
        assert [value for _, value in scalars[key]] == pytest.approx([entry[key] for entry in log], rel=1e-6)
    (hparams_file,) = tracker_dir.rglob("hparams.yml")
    hparams = hparams_file.read_text()
    assert "learning_rate: 0.003" in hparams and "report_to: '[''tensorboard'']'" in hparams


def test_no_trackers_by_default(tiny_base, tiny_data, tmp_path):
    run = base_run(max_steps=1)
    assert run.report_to == ()
    train(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET, out_dir=tmp_path / "out",
          checkpoint_dir=tmp_path / "ckpt")
    assert not (tmp_path / "out" / "trackers").exists()


def test_report_to_is_checked():
    assert RunConfig.from_dict(json.loads(base_run(report_to=["tensorboard", "mlflow"]).to_json())).report_to == (
        "tensorboard", "mlflow")
    with pytest.raises(UserError, match="report_to='tensorboard' — give a list of trackers out of tensorboard, "
                                        "wandb, mlflow"):
        base_run(report_to="tensorboard")
    with pytest.raises(UserError, match="report_to=\\['comet'\\]"):
        base_run(report_to=["comet"])


def test_a_missing_tracker_package_is_named(monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(UserError, match="report_to: wandb is not installed — pip install wandb"):
        trackers.accelerator_options(base_run(report_to=["wandb"]), "trackers")
