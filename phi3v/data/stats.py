"""Per-split statistics of a dataset folder (`stats_<split>.json`): sizes, images, answers, tokens."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from phi3v.data.records import first_turn_answers, image_file, read_records, split_path
from phi3v.hd_geometry import num_image_tokens

ImageTokenCounter = Callable[[int, int, int], int]  # (height, width, num_crops) -> tokens
TOP_ANSWERS = 20


def summary(values: Sequence[int]) -> dict[str, float | int]:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}


def histogram(values: Sequence[int]) -> dict[str, int]:
    """Count of each value, keys as strings (JSON), in increasing order."""
    return {str(value): count for value, count in sorted(Counter(values).items())}


def split_stats(
    jsonl: str | os.PathLike,
    images_dir: str | os.PathLike,
    num_crops: int,
    image_token_counter: ImageTokenCounter,
) -> dict:
    """Statistics of one split; image sizes are read from the file headers, pixels are not decoded."""
    records = read_records(jsonl)
    images_dir = Path(images_dir)
    size_of: dict[str, tuple[int, int]] = {}  # relative path -> (height, width)

    def image_tokens(relative: str) -> int:
        if relative not in size_of:
            with Image.open(image_file(images_dir, relative)) as image:
                size_of[relative] = (image.height, image.width)
        return image_token_counter(*size_of[relative], num_crops)

    images_per_sample = [len(r.image_paths) for r in records]
    turns_per_sample = [len(r.conversations) for r in records]
    tokens_per_sample = [sum(image_tokens(p) for p in r.image_paths) for r in records]
    answers = Counter(first_turn_answers(records))
    return {
        "split_file": Path(jsonl).name,
        "samples": len(records),
        "images_per_sample": {**summary(images_per_sample), "histogram": histogram(images_per_sample)},
        "turns_per_sample": {**summary(turns_per_sample), "histogram": histogram(turns_per_sample)},
        "answers": {
            "distinct": len(answers),
            "top": [[answer, count] for answer, count in answers.most_common(TOP_ANSWERS)],
        },
        "num_crops": num_crops,
        "image_tokens_per_sample": summary(tokens_per_sample),
    }


def default_image_token_counter() -> ImageTokenCounter:
    """The real model's count (336-pixel crops), the arithmetic its image processor uses."""
    return num_image_tokens


def write_stats(
    folder: str | os.PathLike,
    name: str,
    num_crops: int,
    image_token_counter: ImageTokenCounter | None = None,
    splits: Sequence[str] = ("train", "val", "test"),
) -> list[Path]:
    """Write `stats_<split>.json` for every split file present; return the written paths."""
    folder = Path(folder)
    counter = image_token_counter or default_image_token_counter()
    written = []
    for split in splits:
        jsonl = split_path(folder, name, split)
        if not jsonl.is_file():
            continue
        stats = split_stats(jsonl, folder / "images", num_crops, counter)
        out = folder / f"stats_{split}.json"
        out.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(out)
    return written
