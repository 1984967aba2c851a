from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from phi3v.data.records import Record, Turn, read_records, write_records
from phi3v.data.validation import main, validate_dataset, validate_or_raise
from phi3v.errors import UserError

from .builders import record, write_lines, write_png


def test_clean_folder_has_no_problems(clean_folder):
    assert validate_dataset(clean_folder, "tiny") == []
    assert validate_or_raise(clean_folder, "tiny") == {"train": 3, "val": 1, "test": 1}


def test_read_write_round_trip(tmp_path):
    records = [
        Record("r-0", "tiny", [Turn(["a.png"], "q", "a"), Turn([], "q2", "a2")]),
        Record("r-1", "tiny", [Turn(["b.png", "c.png"], "<|image_1|><|image_2|>\nq", "a")], answers=["a", "b"]),
    ]
    assert write_records(tmp_path / "x.jsonl", records) == 2
    assert read_records(tmp_path / "x.jsonl") == records
    first = json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0])
    assert "answers" not in first  # optional key stays absent


def test_read_records_stops_at_first_bad_line(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [record("r-0", []), record("r-1", [], assistant=""), "{oops"])
    with pytest.raises(UserError, match=rf"x\.jsonl:2: conversations\[0\]: 'assistant' text is empty — "):
        read_records(path)


def test_read_records_refuses_a_repeated_id_naming_both_lines(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [record("r-0", []), record("r-1", []), record("r-0", [])])
    with pytest.raises(UserError, match=rf"x\.jsonl:3: duplicate id 'r-0' \(first used at .*x\.jsonl:1\) — "):
        read_records(path)


def write_with_latin1_byte(path: Path, lines: list, bad_line: int) -> Path:
    """The lines, with a Latin-1 'é' (0xe9, not UTF-8) in the assistant text of line `bad_line`."""
    write_lines(path, lines)
    text = path.read_bytes().split(b"\n")
    text[bad_line - 1] = text[bad_line - 1].replace(b"A cat.", b"A caf\xe9.")
    path.write_bytes(b"\n".join(text))
    return path


def test_non_utf8_byte_is_reported_on_its_line_and_later_lines_are_checked(tmp_path):
    lines = [record(f"r-{i}", []) for i in range(30)]
    lines[27]["conversations"][0]["assistant"] = ""  # a problem after the bad byte
    path = write_with_latin1_byte(tmp_path / "bad_train.jsonl", lines, bad_line=25)
    with pytest.raises(UserError, match=r"bad_train\.jsonl:25: not UTF-8 text \(byte 0xe9 at byte \d+ of the line"):
        read_records(path)
    write_lines(tmp_path / "bad_val.jsonl", [record("v-0", [])])
    messages = [str(p) for p in validate_dataset(tmp_path, "bad", check_images=False)]
    assert len(messages) == 2, messages
    assert messages[0].startswith(f"{path}:25: not UTF-8 text")
    assert messages[1].startswith(f"{path}:28: conversations[0]: 'assistant' text is empty")


def test_read_records_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_records(tmp_path / "nope.jsonl")


def planted_folder(root: Path) -> tuple[Path, list[tuple[str, int | None, str]]]:
    """A folder `bad` with one problem per line; returns it and the expected (file, line, text)."""
    images = root / "images"
    write_png(images / "a.png")
    write_png(images / "b.png")
    truncated = images / "truncated.png"
    write_png(images / "big.png", size=(64, 64))
    truncated.write_bytes((images / "big.png").read_bytes()[:60])  # header intact, pixel data cut
    write_png(root / "outside.png")
    train_lines = [
        record("t-0", ["a.png"]),                                                        # 1 clean
        '{"id": "t-1", "source": "tiny", "conversations": [}',                           # 2
        {"id": "t-2", "source": "tiny", "conversations": [{"images": [], "user": "q"}]},  # 3
        record(7, ["a.png"]),                                                            # 4
        record("t-4", ["missing.png"]),                                                  # 5
        record("t-5", ["truncated.png"]),                                                # 6
        record("t-6", ["../outside.png"]),                                               # 7
        record("t-7", ["a.png", "b.png"], user="<|image_2|><|image_1|> same?"),          # 8
        record("t-8", ["a.png"], assistant="  "),                                         # 9
        record("t-0", ["b.png"]),                                                        # 10
        {"id": "t-10", "source": "tiny", "conversations": []},                           # 11
        record("t-11", ["a.png"], answers=[1, 2]),                                       # 12
        "",                                                                              # 13
        record("t-13", ["a.png"]),                                                       # 14 clean
    ]
    val_lines = [
        record("v-0", ["b.png"]),                                                        # 1 clean
        record("t-13", ["b.png"]),                                                       # 2
        {"id": "v-2", "source": "tiny", "conversations": [{"image": ["a.png"], "images": [], "user": "q", "assistant": "a"}]},  # 3
    ]
    write_lines(root / "bad_train.jsonl", train_lines)
    write_lines(root / "bad_val.jsonl", val_lines)
    expected = [
        ("bad_train.jsonl", 2, "invalid JSON"),
        ("bad_train.jsonl", 3, "conversations[0]: missing key 'assistant'"),
        ("bad_train.jsonl", 4, "'id' is a number, expected a string"),
        ("bad_train.jsonl", 5, "image 'missing.png' does not exist"),
        ("bad_train.jsonl", 6, "image 'truncated.png' cannot be decoded"),
        ("bad_train.jsonl", 7, "image path '../outside.png' leaves the images/ folder"),
        ("bad_train.jsonl", 8, "user text has <|image_2|><|image_1|> but the turn has 2 image(s), so it needs <|image_1|><|image_2|>"),
        ("bad_train.jsonl", 9, "'assistant' text is empty"),
        ("bad_train.jsonl", 10, "duplicate id 't-0' (first used at"),
        ("bad_train.jsonl", 11, "'conversations' is empty"),
        ("bad_train.jsonl", 12, "'answers' must be a non-empty list of strings"),
        ("bad_train.jsonl", 13, "empty line"),
        ("bad_val.jsonl", 2, "duplicate id 't-13' (first used at"),
        ("bad_val.jsonl", 3, "conversations[0]: unknown key 'image'"),
    ]
    return root, expected


def test_validator_reports_every_planted_problem_at_its_line(tmp_path):
    folder, expected = planted_folder(tmp_path)
    problems = validate_dataset(folder, "bad")
    found = [(Path(p.path).name, p.line, str(p)) for p in problems]
    for file, line, text in expected:
        matches = [s for f, l, s in found if f == file and l == line and text in s]
        assert matches, f"no problem {text!r} at {file}:{line}; got:\n" + "\n".join(map(str, problems))
    assert len(problems) == len(expected), "\n".join(map(str, problems))
    # every message reads `file:line: problem — fix`
    assert all(str(p).startswith(f"{p.path}:{p.line}: ") and " — " in str(p) for p in problems)
    dup = next(str(p) for p in problems if "duplicate id 't-13'" in str(p))
    assert f"{folder / 'bad_train.jsonl'}:14" in dup


def test_validator_without_image_checks_skips_files(tmp_path):
    folder, _ = planted_folder(tmp_path)
    messages = [str(p) for p in validate_dataset(folder, "bad", check_images=False)]
    assert not any("does not exist" in m or "cannot be decoded" in m for m in messages)
    assert any("leaves the images/ folder" in m for m in messages)  # a path check, not a file check


def test_missing_required_split_and_images_folder(tmp_path):
    write_lines(tmp_path / "x_train.jsonl", [record("t-0", [])])
    messages = [str(p) for p in validate_dataset(tmp_path, "x")]
    assert any(m.startswith(str(tmp_path / "images")) and "folder not found" in m for m in messages)
    assert any(m.startswith(str(tmp_path / "x_val.jsonl")) and "required val split not found" in m for m in messages)
    assert not any("x_test.jsonl" in m for m in messages)  # test is optional


def conversation(id: str, turns: list[tuple[list[str], str]]) -> dict:
    return {"id": id, "source": "s", "conversations": [{"images": i, "user": u, "assistant": "x"} for i, u in turns]}


def test_tag_rules_across_turns(tmp_path):
    write_png(tmp_path / "images" / "a.png")
    write_lines(tmp_path / "t_train.jsonl", [
        conversation("c-1", [(["a.png"], "<|image_1|>\nq"), (["a.png"], "<|image_2|>\nq")]),  # ok
        conversation("c-2", [(["a.png"], "q"), (["a.png"], "<|image_2|>\nq")]),               # ok: turn 1 gets tags
        conversation("c-3", [(["a.png"], "<|image_1|>\nq"), (["a.png"], "<|image_1|>\nq")]),  # turn 2 must say 2
        conversation("c-4", [([], "<|image_1|> q")]),                                          # tag without image
    ])
    write_lines(tmp_path / "t_val.jsonl", [conversation("v-1", [(["a.png"], "q")])])
    problems = validate_dataset(tmp_path, "t")
    assert [(p.line, p.problem.split(":")[0]) for p in problems] == [(3, "conversations[1]"), (4, "conversations[0]")]


def test_validate_or_raise_lists_all_capped_and_writes_nothing(tmp_path, capsys):
    write_png(tmp_path / "images" / "a.png")
    write_lines(tmp_path / "many_train.jsonl", [record(f"t-{i}", ["nope.png"]) for i in range(60)])
    write_lines(tmp_path / "many_val.jsonl", [record("v-0", ["a.png"])])
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UserError) as info:
        validate_or_raise(tmp_path, "many")
    message = str(info.value)
    assert "has 60 problem(s)" in message and "... and 10 more" in message
    assert f"{tmp_path / 'many_train.jsonl'}:50:" in message and f"{tmp_path / 'many_train.jsonl'}:51:" not in message
    assert main([str(tmp_path), "many"]) == 2
    assert "has 60 problem(s)" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before


def test_validate_or_raise_missing_folder(tmp_path):
    with pytest.raises(UserError, match="dataset folder not found"):
        validate_or_raise(tmp_path / "nowhere", "x")
