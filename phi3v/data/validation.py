"""Checking a whole dataset folder in the recipe's jsonl format: every line of every split, every image.

`validate_dataset` lists every problem at once (`file:line: problem — fix`): structure and image tags
(`phi3v.data.records.parse_line`), image files present and decodable, ids unique within and across
splits. `python -m phi3v.data.validation FOLDER NAME` runs the check by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable

from PIL import Image

from phi3v.data.records import Problem, duplicate_id, image_file, numbered_lines, parse_line, split_path
from phi3v.errors import UserError, entry_point

REQUIRED_SPLITS = ("train", "val")  # a custom dataset's; converted ones name their eval split
MAX_PROBLEMS_SHOWN = 50


def _image_file_problem(images_dir: Path, relative: str) -> str | None:
    """Why the image file cannot be used (None when it opens and decodes)."""
    path = image_file(images_dir, relative)
    try:
        path.resolve().relative_to(images_dir.resolve())
    except ValueError:
        return "leaves the images/ folder (through a link)"
    if not path.is_file():
        return "does not exist"
    try:
        with Image.open(path) as image:
            image.verify()
        # verify() skips the pixel data; a truncated file only fails when decoded
        with Image.open(path) as image:
            image.load()
    except Exception as e:  # PIL raises many types for broken files
        return f"cannot be decoded ({type(e).__name__}: {e})"
    return None


class _ImageChecker:
    """Checks each distinct image file once, however many records use it."""

    def __init__(self, images_dir: Path):
        self.images_dir = images_dir
        self.cache: dict[str, str | None] = {}

    def problems(self, obj: dict) -> list[tuple[str, str]]:
        problems = []
        for i, turn in enumerate(obj["conversations"]):
            for relative in turn.get("images", []):
                if relative not in self.cache:
                    self.cache[relative] = _image_file_problem(self.images_dir, relative)
                if (why := self.cache[relative]) is not None:
                    problems.append((f"conversations[{i}]: image {relative!r} {why}", f"put a readable image at {self.images_dir / relative}"))
        return problems


def validate_dataset(
    folder: str | os.PathLike,
    name: str,
    splits: Iterable[str] = ("train", "val", "test"),
    check_images: bool = True,
    required: Iterable[str] = REQUIRED_SPLITS,
) -> list[Problem]:
    """Check every line of `<name>_<split>.jsonl` in `folder`; return every problem found.

    The `required` splits must exist, the others are optional. Checked: JSON, keys and types, non-empty
    texts, image paths (inside images/, present, decodable), `<|image_k|>` tags against the image
    counts, and ids unique within and across splits.
    """
    folder = Path(folder)
    images_dir = folder / "images"
    problems: list[Problem] = []
    if check_images and not images_dir.is_dir():
        problems.append(Problem(str(images_dir), None, "folder not found", "put the images under images/ next to the jsonl files"))
        check_images = False
    checker = _ImageChecker(images_dir)
    first_seen: dict[str, str] = {}  # id -> "file:line"
    for split in splits:
        path = split_path(folder, name, split)
        if not path.is_file():
            if split in required:
                problems.append(Problem(str(path), None, f"required {split} split not found", f"write the {split} records to {path.name}"))
            continue
        problems += _validate_split(path, checker if check_images else None, first_seen)
    return problems


def _validate_split(path: Path, checker: _ImageChecker | None, first_seen: dict[str, str]) -> list[Problem]:
    problems = []
    lines = 0
    for number, text in numbered_lines(path):
        lines += 1
        obj, line_problems = parse_line(text)
        if obj is not None and not line_problems and checker is not None:
            line_problems = checker.problems(obj)
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            where = f"{path}:{number}"
            if obj["id"] in first_seen:
                line_problems.append(duplicate_id(obj["id"], first_seen))
            else:
                first_seen[obj["id"]] = where
        problems += [Problem(str(path), number, *p) for p in line_problems]
    if lines == 0:
        problems.append(Problem(str(path), None, "file is empty", "write at least one record"))
    return problems


def validate_or_raise(folder: str | os.PathLike, name: str, eval_split: str = "val") -> dict[str, int]:
    """Validate a custom dataset; one UserError listing every problem, else records per split.

    Writes nothing, so a failed check leaves no output behind.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: dataset folder not found — check the dataset's path in the config")
    # A custom dataset brings train and val (the recipe's format); its eval split must exist too.
    problems = validate_dataset(folder, name, required=tuple(dict.fromkeys(("train", "val", eval_split))))
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise UserError(f"dataset {name!r} in {folder} has {len(problems)} problem(s):\n{shown}{tail}")
    counts = {}
    for split in ("train", "val", "test"):
        path = split_path(folder, name, split)
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                counts[split] = sum(1 for _ in f)
    return counts


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a dataset folder in the recipe's jsonl format.")
    parser.add_argument("folder", help="folder holding <name>_<split>.jsonl and images/")
    parser.add_argument("name", help="dataset name, the <name> in <name>_<split>.jsonl")
    args = parser.parse_args(argv)
    counts = validate_or_raise(args.folder, args.name)
    print(", ".join(f"{split}: {n} records" for split, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
