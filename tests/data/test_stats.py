from __future__ import annotations

import json

import pytest

from phi3v.data.stats import split_stats, write_stats
from phi3v.image_processing_phi3v import Phi3VImageProcessor

from .builders import record, write_lines, write_png


def fake_counter(height: int, width: int, num_crops: int) -> int:
    """Distinct per size and crop setting, so the sums below pin down which sizes were read."""
    return height * 100 + width + num_crops


@pytest.fixture
def split(tmp_path):
    write_png(tmp_path / "images" / "wide.png", size=(20, 10))   # height 10, width 20
    write_png(tmp_path / "images" / "tall.png", size=(5, 30))    # height 30, width 5
    write_lines(tmp_path / "s_train.jsonl", [
        record("1", ["wide.png"], assistant="Yes."),
        record("2", ["wide.png", "tall.png"], assistant="no"),
        record("3", [], assistant="yes"),
        {"id": "4", "source": "s", "conversations": [
            {"images": ["tall.png"], "user": "q", "assistant": " YES"},
            {"images": ["wide.png"], "user": "q", "assistant": "other"},
        ]},
    ])
    write_lines(tmp_path / "s_val.jsonl", [record("v", ["tall.png"], assistant="no")])
    return tmp_path


def test_split_stats_numbers(split):
    stats = split_stats(split / "s_train.jsonl", split / "images", 4, fake_counter)
    wide, tall = 10 * 100 + 20 + 4, 30 * 100 + 5 + 4
    assert stats["samples"] == 4
    assert stats["images_per_sample"] == {"min": 0, "mean": 1.25, "max": 2, "histogram": {"0": 1, "1": 1, "2": 2}}
    assert stats["turns_per_sample"] == {"min": 1, "mean": 1.25, "max": 2, "histogram": {"1": 3, "2": 1}}
    assert stats["answers"] == {"distinct": 2, "top": [["yes", 3], ["no", 1]]}  # first turns, normalised
    tokens = [wide, wide + tall, 0, tall + wide]
    assert stats["image_tokens_per_sample"] == {"min": 0, "mean": sum(tokens) / 4, "max": max(tokens)}
    assert stats["num_crops"] == 4


def test_write_stats_writes_one_file_per_present_split(split):
    written = write_stats(split, "s", num_crops=1, image_token_counter=fake_counter)
    assert [p.name for p in written] == ["stats_train.json", "stats_val.json"]
    val = json.loads((split / "stats_val.json").read_text())
    assert val["samples"] == 1 and val["image_tokens_per_sample"]["max"] == 30 * 100 + 5 + 1


def test_write_stats_counts_tokens_with_the_real_image_processor(split):
    write_stats(split, "s", num_crops=16)
    val = json.loads((split / "stats_val.json").read_text())
    # a 5x30 (w x h) image is tall: 16 crops give a 1-wide, several-high grid
    assert val["image_tokens_per_sample"]["max"] == Phi3VImageProcessor().num_image_tokens(30, 5, 16)
