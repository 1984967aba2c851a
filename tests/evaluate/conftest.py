"""Fixture results and the resolved configuration they belong to."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from phi3v.layout import ReportInputs, ResultsLayout, report_inputs
from phi3v.workflow import settings

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
# Every fixture file gets this modification time, so the footer's "newest result" date is fixed.
FIXED_MTIME = 1_735_732_800  # 2025-01-01 12:00 UTC


def run(dataset, name, strategy, precision, attention, lr, epochs, batch, rank=None, alpha=None,
        skip_reason=None, max_steps=None):
    return {
        "dataset": dataset, "run": name, "strategy": strategy, "precision": precision,
        "attention": attention, "learning_rate": lr, "epochs": epochs, "batch_size": batch,
        "per_device_batch_size": 1, "lora_rank": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "weight_decay": 0.01, "warmup_steps": 50, "max_grad_norm": 1.0, "num_crops": 1,
        "gradient_checkpointing": True, "packing": False, "checkpoint_every": None,
        "max_steps": max_steps, "max_train_samples": None, "seed": 0, "deepspeed": False, "report_to": [],
        "skip_reason": skip_reason,
    }


def speed_row(row, strategy, attention, precision, skip_reason=None):
    return {"row": row, "strategy": strategy, "attention": attention, "precision": precision,
            "nodes": 1, "gpus": 1, "effective_batch": 8, "skip_reason": skip_reason}


def demo_config() -> dict:
    """A resolved configuration in the shape `phi3v.workflow.settings.resolve_config` returns."""
    return {
        "preset": "demo",
        "results_dir": "results",
        "model": {"source": "demo", "id": "microsoft/Phi-3.5-vision-instruct", "revision": None,
                  "cache_dir": None},
        "hardware": {"accelerator": "cpu", "gpus_per_node": 1, "nodes": 1},
        "evaluation": {"batch_size": 16, "stop_tokens": "eos", "max_new_tokens": 16, "max_samples": None,
                       "base_precision": "bf16", "base_attention": "sdpa"},
        "datasets": {
            "docvqa": {"source": "synthetic", "metric": "anls", "eval_split": "test", "num_crops": 1},
            "hateful_memes": {"source": "synthetic", "metric": "accuracy", "eval_split": "test",
                              "num_crops": 1},
            "ucf101": {"source": "synthetic", "metric": "accuracy", "eval_split": "val", "num_crops": 1},
        },
        "runs": [
            run("docvqa", "full-bf16-sdpa", "full", "bf16", "sdpa", 5e-6, 1, 8, max_steps=20),
            run("docvqa", "full-fp16-eager", "full", "fp16", "eager", 5e-6, 2, 64,
                skip_reason="fp16 training needs a GPU"),
            run("docvqa", "full-bf16-eager", "full", "bf16", "eager", 5e-6, 1, 8, max_steps=20),
            run("docvqa", "lora-bf16-sdpa", "lora", "bf16", "sdpa", 2e-4, 2, 64, rank=32, alpha=16),
            run("hateful_memes", "full-bf16-sdpa", "full", "bf16", "sdpa", 5e-5, 2, 8),
            run("hateful_memes", "qlora-bf16-sdpa", "qlora", "bf16", "sdpa", 2e-4, 2, 64, rank=128,
                alpha=256, skip_reason="QLoRA needs CUDA (bitsandbytes)"),
            run("ucf101", "lora-bf16-sdpa", "lora", "bf16", "sdpa", 2e-4, 1, 8, rank=8, alpha=16),
        ],
        "speed": {
            "weights": "random",
            "rows": [
                speed_row("full-eager-bf16-1x1", "full", "eager", "bf16"),
                speed_row("full-flash_attention_2-bf16-1x1", "full", "flash_attention_2", "bf16",
                          skip_reason="flash attention needs a GPU"),
                speed_row("lora-sdpa-bf16-1x1", "lora", "sdpa", "bf16"),
                speed_row("full-eager-fp16-1x1", "full", "eager", "fp16"),
            ],
        },
    }


def report_files(results_dir: Path, config: dict) -> ReportInputs:
    """The result files the tables rule declares for `config`, under `results_dir`."""
    trained = [(run["dataset"], run["run"]) for run in settings.active_runs(config)]
    return ReportInputs(report_inputs(ResultsLayout(results_dir), settings.evaluations(config), trained,
                                      settings.speed_rows(config), settings.lmms_eval_evaluations(config)))


@pytest.fixture
def config() -> dict:
    return demo_config()


@pytest.fixture
def results_dir(tmp_path) -> Path:
    """A copy of the fixture results with fixed modification times."""
    target = tmp_path / "results"
    shutil.copytree(FIXTURES / "results", target)
    for path in target.rglob("*"):
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    return target
