"""Cauldron sources (Hateful Memes, NLVR2): split rule, prompts, image counts, synthetic raw data, download."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from phi3v.data.validation import validate_dataset
from phi3v.data.sources import cauldron
from phi3v.errors import UserError

from .layouts import CAULDRON_SCHEMA, LocalHub, image_bytes, read_jsonl, write_cauldron

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white"]


def meme_rows(n: int) -> list:
    return [([image_bytes(COLOURS[i % len(COLOURS)], size=(24, 18))],
             [(f"Is meme {i} hateful?\nAnswer yes or no.", "Yes." if i % 3 == 0 else "No.")]) for i in range(n)]


def test_hateful_memes_eval_is_the_first_rows_across_shards(tmp_path):
    raw = tmp_path / "raw"
    rows = meme_rows(7)
    write_cauldron(raw, "hateful_memes", rows[:4], shard="00000-of-00002-aa")
    write_cauldron(raw, "hateful_memes", rows[4:], shard="00001-of-00002-bb")
    summary = cauldron.convert_hateful_memes(raw, tmp_path / "out", eval_size=3)
    assert summary == {"test": {"records": 3, "skipped_corrupt": 0}, "train": {"records": 4, "skipped_corrupt": 0}}

    test = read_jsonl(tmp_path / "out/hateful_memes_test.jsonl")
    train = read_jsonl(tmp_path / "out/hateful_memes_train.jsonl")
    assert [r["id"] for r in test] == ["test-0000000000", "test-0000000001", "test-0000000002"]
    assert [r["id"] for r in train] == [f"train-{i:010d}" for i in range(3, 7)]
    assert train[0] == {"id": "train-0000000003", "source": "hateful_memes", "conversations": [
        {"images": ["train/train-0000000003.0.png"],
         "user": "Is meme 3 hateful?\nAnswer yes or no.", "assistant": "Yes."}]}
    for record in test + train:
        i = int(record["id"].split("-")[1])
        turn = record["conversations"][0]
        assert turn["user"] == rows[i][1][0][0] and turn["assistant"] == rows[i][1][0][1]
        assert (tmp_path / "out/images" / turn["images"][0]).read_bytes() == rows[i][0][0]
    assert validate_dataset(tmp_path / "out", "hateful_memes", splits=("train", "test")) == []


def test_nlvr2_keeps_two_images_on_the_first_turn_and_later_turns_text_only(tmp_path):
    raw = tmp_path / "raw"
    write_cauldron(raw, "nlvr2", [
        ([image_bytes("red"), image_bytes("blue", image_format="JPEG")],
         [("Is the left one red? Answer yes or no.", "Yes."), ("And the right one?", "No.")]),
        ([image_bytes("green"), image_bytes("green")], [("Same colour? Answer yes or no.", "Yes.")]),
    ])
    cauldron.convert_nlvr2(raw, tmp_path / "out", eval_size=1)
    [test] = read_jsonl(tmp_path / "out/nlvr2_test.jsonl")
    assert test["conversations"] == [
        {"images": ["test/test-0000000000.0.png", "test/test-0000000000.1.jpg"],
         "user": "Is the left one red? Answer yes or no.", "assistant": "Yes."},
        {"images": [], "user": "And the right one?", "assistant": "No."},
    ]
    right = np.asarray(Image.open(tmp_path / "out/images/test/test-0000000000.1.jpg"))
    assert right.shape == (16, 20, 3) and abs(int(right[..., 2].mean()) - 255) < 8  # the blue JPEG
    [train] = read_jsonl(tmp_path / "out/nlvr2_train.jsonl")
    assert train["id"] == "train-0000000001" and len(train["conversations"][0]["images"]) == 2


@pytest.mark.parametrize("config, images, message", [
    ("nlvr2", 1, r"row 1: a nlvr2 example needs exactly 2 image\(s\), found 1"),
    ("hateful_memes", 2, r"row 1: a hateful_memes example needs exactly 1 image\(s\), found 2"),
])
def test_wrong_image_count_names_the_row(config, images, message, tmp_path):
    per_example = cauldron.IMAGES_PER_EXAMPLE[config]
    rows = [([image_bytes("red")] * per_example, [("q", "Yes.")]), ([image_bytes("red")] * images, [("q", "No.")])]
    write_cauldron(tmp_path / "raw", config, rows + rows)
    with pytest.raises(UserError, match=message):
        cauldron.convert_cauldron(tmp_path / "raw", tmp_path / "out", config, name=config, eval_size=1)
    assert not (tmp_path / "out").exists()


def test_split_rule_needs_training_rows_and_texts(tmp_path):
    write_cauldron(tmp_path / "raw", "hateful_memes", meme_rows(3))
    with pytest.raises(UserError, match="has 3 rows, but eval_size=3 leaves none for training"):
        cauldron.convert_hateful_memes(tmp_path / "raw", tmp_path / "out", eval_size=3)
    with pytest.raises(UserError, match="eval_size must be a positive integer"):
        cauldron.convert_hateful_memes(tmp_path / "raw", tmp_path / "out", eval_size=0)
    with pytest.raises(UserError, match=r"has 3 rows, but eval_size=500"):  # the recipe's default
        cauldron.convert_hateful_memes(tmp_path / "raw", tmp_path / "out")
    write_cauldron(tmp_path / "raw2", "hateful_memes", [([image_bytes("red")], [])] * 2)
    with pytest.raises(UserError, match=r"row 0: 'texts' is empty"):
        cauldron.convert_hateful_memes(tmp_path / "raw2", tmp_path / "out", eval_size=1)
    with pytest.raises(UserError, match=r"no file matches 'nlvr2/train-\*.parquet'"):
        cauldron.convert_nlvr2(tmp_path / "raw", tmp_path / "out", eval_size=1)


def test_corrupt_meme_is_named_or_skipped(tmp_path):
    rows = meme_rows(4)
    rows[2] = ([b"\x89PNG\r\n\x1a\n broken"], rows[2][1])
    shard = write_cauldron(tmp_path / "raw", "hateful_memes", rows)
    with pytest.raises(UserError, match=rf"{shard} row 2: image 0 is corrupt"):
        cauldron.convert_hateful_memes(tmp_path / "raw", tmp_path / "out", eval_size=1)
    summary = cauldron.convert_hateful_memes(tmp_path / "raw", tmp_path / "out", eval_size=1, skip_corrupt=True)
    assert summary["train"] == {"records": 2, "skipped_corrupt": 1}


@pytest.mark.parametrize("task", ["hateful_memes", "nlvr2"])
def test_synthetic_sets_use_the_hub_layout_and_are_balanced_and_deterministic(task, tmp_path):
    synthesize = getattr(cauldron, f"synthesize_{task}")
    convert = getattr(cauldron, f"convert_{task}")
    sizes = {"train": 30, "test": 10}
    record = synthesize(tmp_path / "raw", seed=1, sizes=sizes)
    assert record["eval_size"] == 10 and json.loads((tmp_path / "raw/SOURCE.json").read_text()) == record
    shard = tmp_path / "raw" / task / "train-00000-of-00001.parquet"
    assert pq.read_schema(shard).remove_metadata() == CAULDRON_SCHEMA
    assert pq.ParquetFile(shard).metadata.num_rows == 40

    summary = convert(tmp_path / "raw", tmp_path / "out")  # eval size from SOURCE.json
    assert summary["test"]["records"] == 10 and summary["train"]["records"] == 30
    for split, n in sizes.items():
        records = read_jsonl(tmp_path / f"out/{task}_{split}.jsonl")
        answers = [r["conversations"][0]["assistant"] for r in records]
        assert answers.count("Yes.") == answers.count("No.") == n // 2
        images = len(records[0]["conversations"][0]["images"])
        assert images == cauldron.IMAGES_PER_EXAMPLE[task]
        assert not any("<|image_" in r["conversations"][0]["user"] for r in records)  # loading adds tags
    assert validate_dataset(tmp_path / "out", task, splits=("train", "test")) == []

    synthesize(tmp_path / "raw2", seed=1, sizes=sizes)
    synthesize(tmp_path / "raw3", seed=2, sizes=sizes)
    same = pq.read_table(tmp_path / "raw2" / task / "train-00000-of-00001.parquet")
    other = pq.read_table(tmp_path / "raw3" / task / "train-00000-of-00001.parquet")
    assert same.equals(pq.read_table(shard)) and not other.equals(same)


def test_synthetic_sizes_are_checked(tmp_path):
    with pytest.raises(UserError, match="sizes for synthetic nlvr2 must be"):
        cauldron.synthesize_nlvr2(tmp_path / "raw", seed=0, sizes={"train": 10})


@pytest.mark.parametrize("download, config", [
    (cauldron.download_hateful_memes, "hateful_memes"), (cauldron.download_nlvr2, "nlvr2")])
def test_download_fetches_one_configuration(download, config, tmp_path, monkeypatch):
    local = LocalHub(tmp_path / "cache")
    local.install(monkeypatch)
    commit = local.repo(cauldron.REPO_ID, {f"{c}/train-0000{i}-of-00002-x.parquet": b"p" * (i + 1)
                                           for c in ("hateful_memes", "nlvr2", "docvqa") for i in range(2)}, ref="abc")
    record = download(tmp_path / "raw", revision="abc", cache_dir=tmp_path / "cache")
    assert record["commit"] == commit and record["revision"] == "abc"
    assert record["allow_patterns"] == [f"{config}/train-*.parquet"]
    assert sorted(record["files"]) == [f"{config}/train-0000{i}-of-00002-x.parquet" for i in range(2)]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["SOURCE.json", config]


def test_hateful_memes_keeps_the_first_turn_only_as_the_recipe_reads_it(tmp_path):
    """The recipe's Hateful Memes collator trains texts[0] and its evaluation scores texts[0]: a row's
    later turns never reach the model, here neither (NLVR2 keeps them: its collator trains every turn)."""
    raw = tmp_path / "raw"
    rows = meme_rows(3)
    rows[2] = (rows[2][0], [rows[2][1][0], ("Why?", "It mocks a group.")])
    write_cauldron(raw, "hateful_memes", rows)
    cauldron.convert_hateful_memes(raw, tmp_path / "out", eval_size=1)
    train = read_jsonl(tmp_path / "out/hateful_memes_train.jsonl")
    assert [len(record["conversations"]) for record in train] == [1, 1]
    assert train[1]["conversations"][0]["assistant"] == rows[2][1][0][1]
