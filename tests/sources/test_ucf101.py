"""UCF-101 source: conversion of an archive in the hub layout, refusal of bad archives, the synthetic set."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from phi3v.data.validation import validate_dataset
from phi3v.data.sources import hub, synthetic_video, ucf101
from phi3v.errors import UserError

from .layouts import LocalHub

GREY_STEP = 12  # frame i of a fixture video is a flat grey of level GREY_BASE + GREY_STEP * i
GREY_BASE = 10
FRAME_W, FRAME_H = 32, 24
# (split, class, stem, frames): 2 classes x 2 splits; frame counts exercise the int(k * total / 8) rule
FIXTURE_VIDEOS = [
    ("train", "Archery", "v_Archery_g01_c01", 8),
    ("train", "Archery", "v_Archery_g01_c02", 13),
    ("train", "BabyCrawling", "v_BabyCrawling_g01_c01", 19),
    ("train", "BabyCrawling", "v_BabyCrawling_g02_c01", 11),
    ("val", "Archery", "v_Archery_g05_c01", 10),
    ("val", "BabyCrawling", "v_BabyCrawling_g05_c01", 17),
]
EXPECTED_PROMPT = (
    "Classify the video into one of the following classes: Archery, BabyCrawling."
)


def grey_counter_video(num_frames: int) -> bytes:
    """An .avi whose frame i is a flat grey of level GREY_BASE + GREY_STEP * i."""
    frames = [np.full((FRAME_H, FRAME_W, 3), GREY_BASE + GREY_STEP * i, np.uint8) for i in range(num_frames)]
    return synthetic_video.encode_avi(frames)


def frame_number(image: Image.Image) -> int:
    """Which fixture frame a decoded JPEG shows, read back from its grey level."""
    return round((np.asarray(image.convert("L"), dtype=np.float64).mean() - GREY_BASE) / GREY_STEP)


def write_archive(raw_dir, videos=FIXTURE_VIDEOS, extra: dict[str, bytes] | None = None, compressed=True):
    files = {
        f"UCF101_subset/{split}/{cls}/{stem}.avi": grey_counter_video(frames) for split, cls, stem, frames in videos
    }
    files.update(extra or {})
    raw_dir.mkdir(parents=True, exist_ok=True)
    archive = raw_dir / ucf101.ARCHIVE_NAME
    synthetic_video.write_tar_gz(archive, files)
    if not compressed:  # the hub's file is a plain tar despite its name
        archive.write_bytes(gzip.decompress(archive.read_bytes()))
    return archive


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_frame_indices_follow_the_recipe_rule():
    assert ucf101.frame_indices(8) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert ucf101.frame_indices(13) == [0, 1, 3, 4, 6, 8, 9, 11]
    assert ucf101.frame_indices(300) == [0, 37, 75, 112, 150, 187, 225, 262]


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain-tar"])
def test_conversion_writes_recipe_records_and_sampled_frames(tmp_path, compressed):
    write_archive(tmp_path / "raw", compressed=compressed)
    out = tmp_path / "out"
    summary = ucf101.convert_ucf101(tmp_path / "raw", out, splits=("train", "val"))

    assert summary == {"train": {"records": 4, "skipped_corrupt": 0}, "val": {"records": 2, "skipped_corrupt": 0}}
    assert sorted(p.name for p in out.iterdir()) == ["images", "ucf101_train.jsonl", "ucf101_val.jsonl"]
    records = read_jsonl(out / "ucf101_train.jsonl") + read_jsonl(out / "ucf101_val.jsonl")
    assert len(records) == len(FIXTURE_VIDEOS)
    # ids number the videos over the splits in order: train then val, classes and files sorted
    for index, (record, (split, cls, stem, total)) in enumerate(zip(records, FIXTURE_VIDEOS)):
        images = [f"{split}/{cls}/{stem}.{k}.jpg" for k in range(8)]
        assert record == {
            "id": f"{split}-{index:010d}",
            "source": "ucf101",
            "conversations": [{"images": images, "user": EXPECTED_PROMPT, "assistant": cls}],
        }
        shown = [frame_number(Image.open(out / "images" / path)) for path in images]
        assert shown == [int(k * total / 8) for k in range(8)], stem
        assert Image.open(out / "images" / images[0]).size == (FRAME_W, FRAME_H)
    assert validate_dataset(out, "ucf101", splits=("train", "val")) == []


def test_unreadable_and_short_videos_are_reported_by_name(tmp_path):
    extra = {
        "UCF101_subset/train/Archery/v_Archery_g09_c01.avi": b"RIFF not really a video",
        "UCF101_subset/val/BabyCrawling/v_BabyCrawling_g09_c02.avi": grey_counter_video(5),
    }
    write_archive(tmp_path / "raw", extra=extra)
    with pytest.raises(UserError) as err:
        ucf101.convert_ucf101(tmp_path / "raw", tmp_path / "out", splits=("train", "val"))
    message = str(err.value)
    assert "UCF101_subset/train/Archery/v_Archery_g09_c01.avi" in message
    assert "UCF101_subset/val/BabyCrawling/v_BabyCrawling_g09_c02.avi (it has 5 frames" in message
    assert "skip_corrupt=True" in message
    assert not (tmp_path / "out").exists()


def test_skip_corrupt_leaves_bad_videos_out_and_counts_them(tmp_path, caplog):
    extra = {
        "UCF101_subset/train/Archery/v_Archery_g09_c01.avi": b"\x00" * 300,
        "UCF101_subset/val/BabyCrawling/v_BabyCrawling_g09_c02.avi": grey_counter_video(5),
    }
    write_archive(tmp_path / "raw", extra=extra)
    out = tmp_path / "out"
    summary = ucf101.convert_ucf101(tmp_path / "raw", out, skip_corrupt=True, splits=("train", "val"))

    assert summary == {"train": {"records": 4, "skipped_corrupt": 1}, "val": {"records": 2, "skipped_corrupt": 1}}
    assert "UCF101_subset/train/Archery/v_Archery_g09_c01.avi" in caplog.text
    assert "UCF101_subset/val/BabyCrawling/v_BabyCrawling_g09_c02.avi" in caplog.text
    stems = [r["conversations"][0]["images"][0] for r in read_jsonl(out / "ucf101_train.jsonl")]
    assert not any("g09" in stem for stem in stems)
    assert not (out / "images" / "train" / "Archery" / "v_Archery_g09_c01.0.jpg").exists()


def test_interrupted_conversion_leaves_no_output_folder(tmp_path, monkeypatch):
    write_archive(tmp_path / "raw")
    real_sample_frames = ucf101.sample_frames
    calls = []

    def interrupted(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_sample_frames(path, *args, **kwargs)

    monkeypatch.setattr(ucf101, "sample_frames", interrupted)
    parent = tmp_path / "results"
    with pytest.raises(KeyboardInterrupt):
        ucf101.convert_ucf101(tmp_path / "raw", parent / "ucf101", splits=("train", "val"))
    assert len(calls) == 3
    assert list(parent.iterdir()) == []  # neither the output nor the extracted videos are left


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        video = grey_counter_video(8)
        ok = tarfile.TarInfo("UCF101_subset/train/Archery/v_Archery_g01_c01.avi")
        ok.size = len(video)
        tar.addfile(ok, io.BytesIO(video))
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buffer.getvalue()


def _file_entry(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 4
    return info


def _link_entry(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member",
    [
        _file_entry("../escaped.avi"),
        _file_entry("UCF101_subset/../../escaped.avi"),
        _file_entry("/tmp/escaped-absolute.avi"),
        _link_entry("UCF101_subset/train/Archery/link.avi", "/etc/passwd", tarfile.SYMTYPE),
        _link_entry("UCF101_subset/train/Archery/hard.avi", "../../../../escaped.avi", tarfile.LNKTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink"],
)
def test_archive_entries_that_escape_are_refused(tmp_path, member):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / ucf101.ARCHIVE_NAME).write_bytes(_tar_with(member, b"evil"))
    with pytest.raises(UserError, match="refusing to extract|link or special file") as err:
        ucf101.convert_ucf101(raw, tmp_path / "work" / "out", splits=("train",))
    assert repr(member.name) in str(err.value)
    assert not (tmp_path / "work" / "escaped.avi").exists() and not (tmp_path / "escaped.avi").exists()
    assert not (tmp_path / "work" / "out").exists()


def test_missing_archive_split_or_garbage_archive_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="synthesize_ucf101"):
        ucf101.convert_ucf101(tmp_path / "raw", tmp_path / "out")
    write_archive(tmp_path / "raw")
    with pytest.raises(UserError, match="no folder UCF101_subset/test/"):
        ucf101.convert_ucf101(tmp_path / "raw", tmp_path / "out")  # the fixture has no test split
    with pytest.raises(UserError, match="splits must be"):
        ucf101.convert_ucf101(tmp_path / "raw", tmp_path / "out", splits=("dev",))
    (tmp_path / "raw" / ucf101.ARCHIVE_NAME).write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(UserError, match="not a readable tar archive"):
        ucf101.convert_ucf101(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_synthetic_archive_is_reproducible_and_in_the_hub_layout(tmp_path):
    sizes = {"train": 2, "val": 1, "test": 1}
    record = ucf101.synthesize_ucf101(tmp_path / "a", seed=7, sizes=sizes)
    ucf101.synthesize_ucf101(tmp_path / "b", seed=7, sizes=sizes)
    ucf101.synthesize_ucf101(tmp_path / "c", seed=8, sizes=sizes)
    first, second, other = (tmp_path / d / ucf101.ARCHIVE_NAME for d in "abc")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert hub.read_source_record(tmp_path / "a") == record
    assert record["synthetic"] is True and record["seed"] == 7 and record["sizes"] == sizes

    with tarfile.open(first, mode="r:*") as tar:
        videos = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert len(videos) == 10 * 4
    for split, count in sizes.items():
        for cls in ucf101.CLASS_NAMES:
            assert len([v for v in videos if v.startswith(f"UCF101_subset/{split}/{cls}/v_{cls}_g")]) == count


def test_synthetic_classes_show_their_colour_and_direction(tmp_path):
    ucf101.synthesize_ucf101(tmp_path / "raw", seed=0, sizes={"train": 1, "val": 1, "test": 1})
    out = tmp_path / "out"
    summary = ucf101.convert_ucf101(tmp_path / "raw", out)
    assert {split: counts["records"] for split, counts in summary.items()} == {"train": 10, "val": 10, "test": 10}
    assert validate_dataset(out, "ucf101") == []
    palette = {name: np.array(rgb, dtype=np.float64) for name, rgb in synthetic_video.BLOCK_COLOURS.items()}
    for record in read_jsonl(out / "ucf101_val.jsonl"):
        turn = record["conversations"][0]
        colour, direction = ucf101.CLASS_PATTERNS[turn["assistant"]]
        assert turn["user"] == ucf101.classification_prompt(ucf101.CLASS_NAMES)  # as the seed's lines
        centres = []
        for path in turn["images"]:
            frame = np.asarray(Image.open(out / "images" / path).convert("RGB"), dtype=np.float64)
            # block pixels: far from the frame's background (its median colour)
            block = np.linalg.norm(frame - np.median(frame, axis=(0, 1)), axis=-1) > 60
            mean_colour = frame[block].mean(axis=0)
            assert min(palette, key=lambda name: np.linalg.norm(palette[name] - mean_colour)) == colour
            ys, xs = np.nonzero(block)
            centres.append((xs.mean(), ys.mean()))
        motion = np.subtract(centres[-1], centres[0])
        dx, dy = synthetic_video.DIRECTIONS[direction]
        for step, moved in zip((dx, dy), motion):
            assert (moved > 5) if step > 0 else (moved < -5) if step < 0 else abs(moved) < 2


def test_synthetic_sizes_are_checked(tmp_path):
    with pytest.raises(UserError, match="exactly"):
        ucf101.synthesize_ucf101(tmp_path, 0, {"train": 2, "val": 1})
    with pytest.raises(UserError, match="'val' must be a positive number"):
        ucf101.synthesize_ucf101(tmp_path, 0, {"train": 2, "val": 0, "test": 1})
    with pytest.raises(UserError, match="exactly"):
        ucf101.synthesize_ucf101(tmp_path, 0, "train=2")


def test_download_fetches_the_recipe_archive_into_the_raw_folder(tmp_path, monkeypatch):
    local = LocalHub(tmp_path / "cache")
    local.install(monkeypatch)
    write_archive(tmp_path / "made")
    commit = local.repo(ucf101.HUB_REPO_ID, {ucf101.ARCHIVE_NAME: (tmp_path / "made" / ucf101.ARCHIVE_NAME).read_bytes(),
                                             "README.md": b"card"}, ref="abc123")
    archive = ucf101.download_ucf101(tmp_path / "raw", revision="abc123", cache_dir=str(tmp_path / "cache"))
    assert archive == tmp_path / "raw" / "UCF101_subset.tar.gz"
    assert hub.read_source_record(tmp_path / "raw")["commit"] == commit
    assert ucf101.convert_ucf101(tmp_path / "raw", tmp_path / "out", splits=("val",))["val"]["records"] == 2


def test_command_line_is_the_recipes_convert_script(offline_hub, tmp_path, capsys):
    """`phi3v convert-ucf101 --out_dir --tmp_dir`: the recipe's convert_ucf101.py (tmp_dir new, then removed)."""
    from phi3v.cli import main

    out, tmp = tmp_path / "ucf101", tmp_path / "tmp"
    assert main(["convert-ucf101", "--out_dir", str(out), "--tmp_dir", str(tmp)]) == 0
    assert not tmp.exists()
    assert all((out / f"ucf101_{split}.jsonl").is_file() for split in ("train", "val", "test"))
    assert f"UCF-101 in {out}: train:" in capsys.readouterr().out
    tmp.mkdir()
    assert main(["convert-ucf101", "--out_dir", str(tmp_path / "again"), "--tmp_dir", str(tmp)]) == 2
    assert "exists" in capsys.readouterr().err and not (tmp_path / "again").exists()
