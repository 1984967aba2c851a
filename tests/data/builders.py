"""Builders for tiny dataset folders: PNG images and jsonl splits."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def write_png(path: Path, size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    """A small RGB PNG; `size` is (width, height) as PIL orders it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_lines(path: Path, lines: list) -> Path:
    """One line per item: dicts are dumped as JSON, strings are written as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def record(id: str, images: list[str], user: str = "What is shown?", assistant: str = "A cat.", **extra) -> dict:
    return {"id": id, "source": "tiny", "conversations": [{"images": images, "user": user, "assistant": assistant}], **extra}
