"""DocVQA source: conversion of raw folders in the hub's layout (hand-written and synthetic), errors, download."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from phi3v.data.validation import validate_dataset
from phi3v.data.sources import docvqa, split_writer
from phi3v.errors import UserError

from .layouts import (
    IMAGE_STRUCT,
    NIELSR_SCHEMA,
    LocalHub,
    image_bytes,
    nielsr_row,
    read_jsonl,
    write_cauldron,
    write_nielsr,
)

@pytest.fixture
def handmade_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    write_nielsr(raw, "train", [
        nielsr_row("q1", "What is the total?", ["$12", "12"], {"bytes": image_bytes("red"), "path": None}),
        nielsr_row("q2", "Who signed?", ["J. Smith"], {"bytes": image_bytes("blue", image_format="JPEG"), "path": None}),
    ])
    # a second train shard: rows continue the split's numbering
    write_nielsr(raw, "train", [
        nielsr_row("q3", "What is the date?", ["May 1", "1 May", "may 1"], {"bytes": image_bytes("green"), "path": None}),
    ], shard="00001-of-00002-def")
    (raw / "data" / "page.png").write_bytes(image_bytes("yellow"))
    write_nielsr(raw, "test", [
        nielsr_row("t1", "Which page?", ["3"], {"bytes": None, "path": "page.png"}),  # image stored by path
    ])
    return raw


def test_converts_the_hub_layout_line_by_line_and_image_by_image(handmade_raw, tmp_path):
    out = tmp_path / "out"
    summary = docvqa.convert_docvqa(handmade_raw, out)
    assert summary == {"test": {"records": 1, "skipped_corrupt": 0}, "train": {"records": 3, "skipped_corrupt": 0}}
    assert read_jsonl(out / "docvqa_train.jsonl") == [
        {"id": "train-0000000000", "source": "docvqa", "answers": ["$12", "12"],
         "conversations": [{"images": ["train/train-0000000000.0.png"],
                            "user": "What is the total?\nAnswer briefly.", "assistant": "$12"}]},
        {"id": "train-0000000001", "source": "docvqa", "answers": ["J. Smith"],
         "conversations": [{"images": ["train/train-0000000001.0.jpg"],
                            "user": "Who signed?\nAnswer briefly.", "assistant": "J. Smith"}]},
        {"id": "train-0000000002", "source": "docvqa", "answers": ["May 1", "1 May", "may 1"],
         "conversations": [{"images": ["train/train-0000000002.0.png"],
                            "user": "What is the date?\nAnswer briefly.", "assistant": "May 1"}]},
    ]
    assert read_jsonl(out / "docvqa_test.jsonl") == [
        {"id": "test-0000000000", "source": "docvqa", "answers": ["3"],
         "conversations": [{"images": ["test/test-0000000000.0.png"],
                            "user": "Which page?\nAnswer briefly.", "assistant": "3"}]},
    ]
    expected = {"train/train-0000000000.0.png": "red", "train/train-0000000002.0.png": "green",
                "test/test-0000000000.0.png": "yellow"}
    for relative, colour in expected.items():
        assert (out / "images" / relative).read_bytes() == image_bytes(colour)
    jpeg = Image.open(out / "images/train/train-0000000001.0.jpg")
    assert jpeg.format == "JPEG" and np.array_equal(
        np.asarray(jpeg), np.asarray(Image.open(io.BytesIO(image_bytes("blue", image_format="JPEG")))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no temporary folder left
    assert validate_dataset(out, "docvqa", splits=("train", "test")) == []


def test_answer_seed_picks_a_gold_answer_per_record_deterministically(handmade_raw, tmp_path):
    picks = []
    for seed in range(12):
        out = tmp_path / f"out{seed}"
        docvqa.convert_docvqa(handmade_raw, out, answer_seed=seed)
        record = read_jsonl(out / "docvqa_train.jsonl")[2]
        assert record["conversations"][0]["assistant"] in record["answers"]
        picks.append(record["conversations"][0]["assistant"])
    assert len(set(picks)) > 1
    docvqa.convert_docvqa(handmade_raw, tmp_path / "again", answer_seed=5)
    assert (tmp_path / "again/docvqa_train.jsonl").read_bytes() == (tmp_path / "out5/docvqa_train.jsonl").read_bytes()


def test_corrupt_image_is_named_or_skipped_with_a_count(tmp_path):
    raw = tmp_path / "raw"
    bad_shard = write_nielsr(raw, "train", [
        nielsr_row("q1", "A?", ["a"], {"bytes": image_bytes("red"), "path": None}),
        nielsr_row("q2", "B?", ["b"], {"bytes": image_bytes("red")[:40], "path": None}),
        nielsr_row("q3", "C?", ["c"], {"bytes": image_bytes("blue"), "path": None}),
    ])
    write_nielsr(raw, "test", [nielsr_row("t1", "D?", ["d"], {"bytes": image_bytes("red"), "path": None})])

    with pytest.raises(UserError) as error:
        docvqa.convert_docvqa(raw, tmp_path / "out")
    assert f"{bad_shard} row 1: image 0 is corrupt" in str(error.value) and "skip_corrupt=True" in str(error.value)
    assert not (tmp_path / "out").exists()

    summary = docvqa.convert_docvqa(raw, tmp_path / "out", skip_corrupt=True)
    assert summary["train"] == {"records": 2, "skipped_corrupt": 1}
    assert [r["id"] for r in read_jsonl(tmp_path / "out/docvqa_train.jsonl")] == ["train-0000000000", "train-0000000002"]
    assert not (tmp_path / "out/images/train/train-0000000001.0.png").exists()


def test_interrupted_conversion_leaves_no_output_folder(handmade_raw, tmp_path, monkeypatch):
    calls = []

    def interrupted(data):
        calls.append(data)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_image_file(data)

    real_image_file = split_writer.image_file
    monkeypatch.setattr(split_writer, "image_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        docvqa.convert_docvqa(handmade_raw, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize("damage, message", [
    ("no_files", r"no file matches 'data/test-\*.parquet'"),
    ("missing_column", r"missing column\(s\) \['answers'\]"),
    ("empty_answers", r"row 0 \(id 'q1'\): 'answers' is empty"),
    ("empty_question", r"row 0 \(id 'q1'\): 'query.en' is empty"),
])
def test_bad_raw_folders_name_the_culprit(damage, message, tmp_path):
    raw = tmp_path / "raw"
    row = nielsr_row("q1", "Q?", ["a"], {"bytes": image_bytes("red"), "path": None})
    if damage == "empty_answers":
        row["answers"] = []
    if damage == "empty_question":
        row["query"]["en"] = " "
    write_nielsr(raw, "train", [row])
    if damage != "no_files":
        write_nielsr(raw, "test", [row])
    if damage == "missing_column":
        pq.write_table(pa.Table.from_pylist([row], schema=NIELSR_SCHEMA).drop_columns(["answers"]),
                       raw / "data" / "test-00000-of-00001-abc.parquet")
    with pytest.raises(UserError, match=message):
        docvqa.convert_docvqa(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_full_train_reads_the_cauldron_docvqa_and_keeps_multi_turn_rows(handmade_raw, tmp_path):
    cauldron_raw = tmp_path / "cauldron"
    write_cauldron(cauldron_raw, "docvqa", [
        ([image_bytes("red")], [("What is the title?\nGive a very brief answer.", "Memo."),
                                ("Who wrote it?\nBe succinct.", "Ann.")]),
    ])
    summary = docvqa.convert_docvqa(handmade_raw, tmp_path / "out", full_train_dir=cauldron_raw)
    assert summary["train"]["records"] == 1 and summary["test"]["records"] == 1
    assert read_jsonl(tmp_path / "out/docvqa_train.jsonl") == [
        {"id": "train-0000000000", "source": "docvqa", "conversations": [
            {"images": ["train/train-0000000000.0.png"],
             "user": "What is the title?\nGive a very brief answer.", "assistant": "Memo."},
            {"images": [], "user": "Who wrote it?\nBe succinct.", "assistant": "Ann."}]},
    ]


def test_full_task_converts_its_two_raw_parts_like_the_full_train_option(handmade_raw, tmp_path):
    raw = tmp_path / "raw_full"
    shutil.copytree(handmade_raw, raw / docvqa.FULL_TRAIN_PARTS["mini"])
    write_cauldron(raw / docvqa.FULL_TRAIN_PARTS["cauldron"], "docvqa", [
        ([image_bytes("red")], [("What is the title?\nGive a very brief answer.", "Memo.")]),
    ])
    docvqa.convert_docvqa_full(raw, tmp_path / "full")
    docvqa.convert_docvqa(raw / "nielsr", tmp_path / "direct", full_train_dir=raw / "cauldron-docvqa")
    for split in ("train", "test"):
        assert read_jsonl(tmp_path / f"full/docvqa_{split}.jsonl") == read_jsonl(tmp_path / f"direct/docvqa_{split}.jsonl")


def test_synthetic_docvqa_is_in_the_hub_layout_deterministic_and_learnable(tmp_path):
    sizes = {"train": 40, "test": 12}
    record = docvqa.synthesize_docvqa(tmp_path / "raw", seed=3, sizes=sizes)
    assert record["synthetic"] and record["sizes"] == sizes
    shards = sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*.parquet"))
    assert shards == ["data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    schema = pq.read_schema(tmp_path / "raw" / shards[1])
    assert schema.names == NIELSR_SCHEMA.names and schema.field("image").type == IMAGE_STRUCT

    docvqa.synthesize_docvqa(tmp_path / "raw2", seed=3, sizes=sizes)
    docvqa.convert_docvqa(tmp_path / "raw", tmp_path / "out")
    docvqa.convert_docvqa(tmp_path / "raw2", tmp_path / "out2")
    for split in ("train", "test"):
        assert (tmp_path / f"out/docvqa_{split}.jsonl").read_bytes() == (tmp_path / f"out2/docvqa_{split}.jsonl").read_bytes()
    records = read_jsonl(tmp_path / "out/docvqa_train.jsonl")
    targets = [r["conversations"][0]["assistant"] for r in records]
    assert max(targets.count(t) for t in set(targets)) / len(targets) < 0.4
    assert all(r["conversations"][0]["user"].endswith("\nAnswer briefly.") for r in records)
    assert validate_dataset(tmp_path / "out", "docvqa", splits=("train", "test")) == []


def test_download_docvqa_takes_the_mini_sets_parquet(tmp_path, monkeypatch):
    local = LocalHub(tmp_path / "cache")
    local.install(monkeypatch)
    commit = local.repo(docvqa.REPO_ID, {"data/train-00000-of-00001-f7.parquet": b"1",
                                         "data/test-00000-of-00001-41.parquet": b"2", "dataset_infos.json": b"{}"})
    record = docvqa.download_docvqa(tmp_path / "raw", revision="main", cache_dir=tmp_path / "cache")
    assert record["allow_patterns"] == ["data/train-*.parquet", "data/test-*.parquet"]
    assert record["commit"] == commit and sorted(record["files"]) == [
        "data/test-00000-of-00001-41.parquet", "data/train-00000-of-00001-f7.parquet"]
    assert not (tmp_path / "raw/dataset_infos.json").exists()


def test_files_are_named_after_the_dataset_key(handmade_raw, tmp_path):
    docvqa.convert_docvqa(handmade_raw, tmp_path / "out", name="docvqa_pages")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jsonl")) == ["docvqa_pages_test.jsonl", "docvqa_pages_train.jsonl"]
    assert validate_dataset(tmp_path / "out", "docvqa_pages", splits=("train", "test"), required=("train", "test")) == []


# DocVQA validation in lmms-eval's layout (`lmms-lab-encoder/DocVQA`, task docvqa_val)


def test_docvqa_validation_downloads_from_the_hub_cache_and_converts_to_one_val_split(offline_hub, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    record = docvqa.download_docvqa_val(raw)  # offline: huggingface_hub resolves it from the local cache
    assert record["repo_id"] == "lmms-lab-encoder/DocVQA" and record["commit"] == offline_hub.commits[record["repo_id"]]
    assert sorted(record["files"]) == ["DocVQA/validation-00000-of-00002.parquet",
                                       "DocVQA/validation-00001-of-00002.parquet"]
    rows = [row for path in sorted(raw.glob("DocVQA/*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert set(rows[0]) == {"questionId", "question", "question_types", "image", "docId", "ucsf_document_id",
                            "ucsf_document_page_no", "answers", "data_split"}

    assert docvqa.convert_docvqa_val(raw, out) == {"val": {"records": len(rows), "skipped_corrupt": 0}}
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["docvqa_val_val.jsonl"]  # evaluation only
    records = read_jsonl(out / "docvqa_val_val.jsonl")
    assert [r["id"] for r in records] == [f"val-{i:010d}" for i in range(len(rows))]  # across both shards
    for record, row in zip(records, rows):
        turn = record["conversations"][0]
        assert turn["user"] == row["question"] + "\nAnswer briefly."  # the recipe's prompt; lmms-eval's replaces it
        assert record["answers"] == row["answers"] and turn["assistant"] == row["answers"][0]
        assert (out / "images" / turn["images"][0]).read_bytes() == row["image"]["bytes"]
    assert validate_dataset(out, "docvqa_val", splits=("val",), required=("val",)) == []


def _validation_shard(path: Path, rows: list[dict], drop: str | None = None) -> None:
    table = pa.Table.from_pylist(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.drop([drop]) if drop else table, path)


def _validation_row(question_id: str, question: str, answers: list[str]) -> dict:
    return {"questionId": question_id, "question": question, "image": {"bytes": image_bytes("red"), "path": None},
            "answers": answers, "data_split": "val"}


def test_docvqa_validation_bad_rows_name_file_row_and_question_id(tmp_path):
    shard = tmp_path / "raw/DocVQA/validation-00000-of-00001.parquet"
    _validation_shard(shard, [_validation_row("49153", "What is the date?", ["May 1"])], drop="question")
    with pytest.raises(UserError, match=r"validation-00000-of-00001.parquet: missing column\(s\) \['question'\]"):
        docvqa.convert_docvqa_val(tmp_path / "raw", tmp_path / "out")
    _validation_shard(shard, [_validation_row("1", "Who?", ["Ann"]), _validation_row("49153", "What is the date?", [])])
    with pytest.raises(UserError, match=r"validation-00000-of-00001.parquet row 1 \(questionId '49153'\): 'answers' is empty"):
        docvqa.convert_docvqa_val(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(UserError, match=r"no file matches 'DocVQA/validation-\*.parquet'.*download_docvqa_val"):
        docvqa.convert_docvqa_val(tmp_path / "empty", tmp_path / "out")


def test_synthetic_docvqa_validation_is_in_the_hub_layout(tmp_path):
    record = docvqa.synthesize_docvqa_val(tmp_path / "raw", seed=3, sizes={"val": 3})
    assert record["sizes"] == {"val": 3} and record["layout"] == "lmms-lab-encoder/DocVQA"
    (shard,) = (tmp_path / "raw").glob("DocVQA/validation-*.parquet")
    assert pq.read_schema(shard).names == list(docvqa.VAL_FEATURES)
    docvqa.synthesize_docvqa_val(tmp_path / "again", seed=3, sizes={"val": 3})
    assert shard.read_bytes() == next((tmp_path / "again").glob("DocVQA/*.parquet")).read_bytes()
    with pytest.raises(UserError, match=r"sizes for synthetic docvqa_val must be \{'val': int\}"):
        docvqa.synthesize_docvqa_val(tmp_path / "bad", seed=0, sizes={"test": 3})
