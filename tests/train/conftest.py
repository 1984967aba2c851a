"""Tiny inputs for the training tests: a random tiny base model and a small image dataset."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from phi3v.training.run_config import RunConfig

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
DATASET = "tiny"


def base_run(**overrides) -> RunConfig:
    """A resolved run config at toy size (every field train() needs)."""
    run = {"dataset": DATASET, "run": "full-bf16-sdpa", "strategy": "full", "precision": "bf16",
           "attention": "sdpa", "learning_rate": 3e-3, "epochs": 1, "batch_size": 4,
           "per_device_batch_size": 2, "lora_rank": None, "lora_alpha": None, "lora_dropout": 0.0,
           "weight_decay": 0.01, "warmup_steps": 2, "max_grad_norm": 1.0, "num_crops": 1,
           "gradient_checkpointing": False, "packing": False, "checkpoint_every": 0, "max_steps": 12,
           "max_train_samples": None, "seed": 0, "deepspeed": False, "report_to": [],
           "train_turns": "all", "freeze_token_embeddings": True, "lora_on_vision": True}
    run.update(overrides)
    run["run"] = f"{run['strategy']}-{run['precision']}-{run['attention']}"
    return RunConfig.from_dict(run)


def write_colour_dataset(folder: Path, n: int = 16, seed: int = 0) -> Path:
    """`tiny_train.jsonl` + images: 'What colour?' -> the colour of a plain picture of varied size."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = rng.choice(sorted(COLOURS))
        size = (rng.choice([40, 56, 90]), rng.choice([30, 56]))
        Image.new("RGB", size, COLOURS[name]).save(folder / "images" / f"{i}.png")
        lines.append({"id": f"train-{i:010d}", "source": DATASET,
                      "conversations": [{"images": [f"{i}.png"], "user": "<|image_1|>\nWhat colour is it?",
                                         "assistant": name}]})
    (folder / f"{DATASET}_train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_colour_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_data) -> Path:
    from phi3v.training.demo_model import corpus_texts, write_random_base

    folder = tmp_path_factory.mktemp("base") / "model"
    write_random_base(folder, texts=corpus_texts([tiny_data]) * 4, vocab_size=400, seed=0)
    return folder
