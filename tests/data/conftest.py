"""Fixtures: a small valid dataset folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from .builders import record, write_lines, write_png


@pytest.fixture
def clean_folder(tmp_path: Path) -> Path:
    """A valid dataset `tiny`: train (3 records, one multi-turn), val (1), test (1)."""
    for name in ("a.png", "b.png", "sub/c.png"):
        write_png(tmp_path / "images" / name)
    write_lines(tmp_path / "tiny_train.jsonl", [
        record("train-0", ["a.png"]),
        record("train-1", ["a.png", "b.png"], user="<|image_1|><|image_2|>\nSame?", assistant="yes"),
        {"id": "train-2", "source": "tiny", "conversations": [
            {"images": ["sub/c.png"], "user": "Color?", "assistant": "red"},
            {"images": [], "user": "Sure?", "assistant": "yes"},
        ]},
    ])
    write_lines(tmp_path / "tiny_val.jsonl", [record("val-0", ["b.png"], answers=["A cat", "cat"])])
    write_lines(tmp_path / "tiny_test.jsonl", [record("test-0", ["sub/c.png"])])
    return tmp_path
