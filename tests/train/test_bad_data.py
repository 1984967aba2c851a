"""`python -m phi3v.training.train` on bad data: one clean error naming the file (and line), no traceback."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

from .conftest import DATASET, base_run, write_colour_dataset


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (8-bit greyscale) and holds none: PIL checks the
    size against its decompression-bomb limit when it opens the file, before any pixel is read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def train_cli(base, data, tmp_path):
    command = [sys.executable, "-m", "phi3v.training.train", "--run-json", base_run(max_steps=4).to_json(),
               "--base-model", str(base), "--data-dir", str(data), "--dataset", DATASET,
               "--out-dir", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_decompression_bomb_is_one_clean_error_naming_the_image(tiny_base, tmp_path):
    data = write_colour_dataset(tmp_path / "data")
    bomb = data / "images" / "3.png"
    bomb.write_bytes(png_header_only(20000, 20000))  # 400 M pixels, over twice PIL's 89 M limit
    done = train_cli(tiny_base, data, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("error: ") == 1, done.stderr[-3000:]  # (after the progress bar's carriage return)
    assert f"error: image {bomb} is too large to decode safely" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "model").exists()


def test_duplicate_ids_are_refused_naming_both_lines(tiny_base, tmp_path, capsys):
    from phi3v.training.train import main

    data = write_colour_dataset(tmp_path / "data")
    train_file = data / f"{DATASET}_train.jsonl"
    lines = train_file.read_text().splitlines()
    lines[9] = lines[9].replace('"train-0000000009"', '"train-0000000002"')
    train_file.write_text("\n".join(lines) + "\n")
    code = main(["--run-json", base_run(max_steps=4).to_json(), "--base-model", str(tiny_base),
                 "--data-dir", str(data), "--dataset", DATASET, "--out-dir", str(tmp_path / "out"),
                 "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert code == 2
    assert (f"error: {train_file}:10: duplicate id 'train-0000000002' (first used at {train_file}:3)"
            in capsys.readouterr().err)


def test_an_empty_training_split_is_named_with_a_fix_that_helps(tiny_base, tmp_path, capsys):
    from phi3v.training.train import main

    data = write_colour_dataset(tmp_path / "data")
    train_file = data / f"{DATASET}_train.jsonl"
    train_file.write_text("")
    code = main(["--run-json", base_run(max_steps=4).to_json(), "--base-model", str(tiny_base),
                 "--data-dir", str(data), "--dataset", DATASET, "--out-dir", str(tmp_path / "out"),
                 "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert code == 2
    err = capsys.readouterr().err
    assert (f"error: {train_file} holds no records: the training split is empty — write the training records into "
            "it (a custom dataset), or delete it and rerun the workflow to convert the dataset again") in err
    assert "batch_size" not in err
    assert not (tmp_path / "out").exists()
