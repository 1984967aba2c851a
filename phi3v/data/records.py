"""The recipe's jsonl record format: one conversation a line, images under `images/`.

    {"id": str, "source": str,
     "conversations": [{"images": [path relative to images/], "user": str, "assistant": str}, ...],
     "answers": [str, ...]}            # optional: every gold answer of the first turn

`read_records` stops at the first bad line (a repeated id included); `phi3v.data.validation` checks every
line of every split (structure, image files, image tags, duplicate ids) and reports all problems at once.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

from phi3v.data.sources.common import write_jsonl
from phi3v.errors import UserError

RECORD_KEYS = {"id": str, "source": str, "conversations": list, "answers": list}
TURN_KEYS = {"images": list, "user": str, "assistant": str}
OPTIONAL_RECORD_KEYS = {"answers"}
OPTIONAL_TURN_KEYS = {"images"}  # a text-only turn may leave it out
JSON_TYPE = {str: "string", list: "list"}  # the JSON name of each expected type

FORMAT_HINT = (
    '{"id": "train-0000000000", "source": "mydata", '
    '"conversations": [{"images": ["a.png"], "user": "question", "assistant": "answer"}]}'
)


def normalize_answer(text: str) -> str:
    """The recipe's answer normalisation for exact-match accuracy: strip whitespace, strip dots, lower-case."""
    return text.strip().strip(".").lower()


@dataclass
class Turn:
    images: list[str]
    user: str
    assistant: str


@dataclass
class Record:
    id: str
    source: str
    conversations: list[Turn]
    answers: list[str] | None = None

    @classmethod
    def from_dict(cls, obj: dict) -> "Record":
        """Build a record from a parsed line that `record_problems` found valid."""
        turns = [Turn(list(t.get("images", [])), t["user"], t["assistant"]) for t in obj["conversations"]]
        answers = list(obj["answers"]) if obj.get("answers") is not None else None
        return cls(obj["id"], obj["source"], turns, answers)

    def to_dict(self) -> dict:
        obj: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "conversations": [
                {"images": list(t.images), "user": t.user, "assistant": t.assistant}
                for t in self.conversations
            ],
        }
        if self.answers is not None:
            obj["answers"] = list(self.answers)
        return obj

    @property
    def image_paths(self) -> list[str]:
        """Every image of the conversation, in order (the order `<|image_k|>` numbers them)."""
        return [path for turn in self.conversations for path in turn.images]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset; `line` is None for problems of a whole file."""

    path: str
    line: int | None
    problem: str
    fix: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.problem} — {self.fix}"


def split_path(folder: str | os.PathLike, name: str, split: str) -> Path:
    return Path(folder) / f"{name}_{split}.jsonl"


# ---------------------------------------------------------------------------------------------
# Structure of one line


def _type_name(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}[type(value)]


def _field_problems(obj: dict, spec: dict[str, type], optional: set[str], where: str) -> list[tuple[str, str]]:
    """Missing, unknown and mistyped keys of one JSON object, as (problem, fix) pairs."""
    problems = []
    for key in obj:
        if key not in spec:
            problems.append((f"{where}unknown key {key!r}", f"remove it; allowed keys are {', '.join(spec)}"))
    for key, expected in spec.items():
        if key not in obj:
            if key not in optional:
                problems.append((f"{where}missing key {key!r}", f"add {key!r} (a {JSON_TYPE[expected]})"))
        elif not isinstance(obj[key], expected):
            problems.append((
                f"{where}{key!r} is {_type_name(obj[key])}, expected a {JSON_TYPE[expected]}",
                f"write {key!r} as a JSON {JSON_TYPE[expected]}",
            ))
    return problems


def image_file(images_dir: str | os.PathLike, relative: str) -> Path:
    """The file `relative` names under `images_dir`, also when the disk spells the name in another Unicode
    normal form than the jsonl (macOS writes names decomposed, NFD; most tools write composed, NFC)."""
    path = Path(images_dir) / relative
    if path.exists() or relative.isascii():
        return path
    for form in ("NFC", "NFD"):
        other = Path(images_dir) / unicodedata.normalize(form, relative)
        if other.exists():
            return other
    return path


def _image_path_problem(path: str) -> str | None:
    """Why `path` cannot name a file under images/ (None when it can)."""
    if not path.strip():
        return "is empty"
    if "\\" in path:
        return "uses backslashes"
    posix = PurePosixPath(path)
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", path):
        return "is absolute"
    if ".." in posix.parts:
        return "leaves the images/ folder"
    return None


def _turn_problems(turn: Any, index: int, first_image_number: int) -> list[tuple[str, str]]:
    where = f"conversations[{index}]: "
    if not isinstance(turn, dict):
        return [(f"{where}is {_type_name(turn)}, expected an object", 'write each turn as {"images": [...], "user": "...", "assistant": "..."}')]
    problems = _field_problems(turn, TURN_KEYS, OPTIONAL_TURN_KEYS, where)
    images = turn.get("images", [])
    if isinstance(images, list):
        for j, path in enumerate(images):
            if not isinstance(path, str):
                problems.append((f"{where}images[{j}] is {_type_name(path)}, expected a string", "give each image as a path relative to images/"))
            elif (why := _image_path_problem(path)) is not None:
                problems.append((f"{where}image path {path!r} {why}", "give a forward-slash path relative to the images/ folder"))
    for key in ("user", "assistant"):
        if isinstance(turn.get(key), str) and not turn[key].strip():
            problems.append((f"{where}{key!r} text is empty", f"write the {key} text or drop the turn"))
    if isinstance(turn.get("user"), str) and isinstance(images, list):
        problems += _tag_problems(turn["user"], len(images), first_image_number, where)
    return problems


def image_tags(numbers: Iterable[int]) -> str:
    """`<|image_k|>` for each k, concatenated."""
    return "".join(f"<|image_{k}|>" for k in numbers)


def _tag_problems(user: str, num_images: int, first_image_number: int, where: str) -> list[tuple[str, str]]:
    """Tags in a turn, if any, must number that turn's images in order, counting over the conversation."""
    # Here, not at the top: the processor imports torch and transformers (~4 s), which a job that
    # only reads records (a training job's Snakemake process) does not need.
    from phi3v.processing_phi3v import image_tag_numbers

    found = image_tag_numbers(user)
    if not found:
        return []
    expected = list(range(first_image_number, first_image_number + num_images))
    if found == expected:
        return []
    return [(
        f"{where}user text has {image_tags(found)} but the turn has {num_images} image(s), "
        f"so it needs {image_tags(expected) or 'no tags'}",
        "tag each of the turn's images once, in order, numbered over the whole conversation, "
        "or remove the tags to have them added",
    )]


def record_problems(obj: Any) -> list[tuple[str, str]]:
    """Everything wrong with one parsed line, without touching the image files, as (problem, fix)."""
    if not isinstance(obj, dict):
        return [(f"line is {_type_name(obj)}, expected an object", f"write one record per line, like {FORMAT_HINT}")]
    problems = _field_problems(obj, RECORD_KEYS, OPTIONAL_RECORD_KEYS, "")
    for key in ("id", "source"):
        if isinstance(obj.get(key), str) and not obj[key].strip():
            problems.append((f"{key!r} is empty", f"give every record a non-empty {key}"))
    answers = obj.get("answers")
    if isinstance(answers, list):
        if not answers or not all(isinstance(a, str) for a in answers):
            problems.append(("'answers' must be a non-empty list of strings", "list every gold answer of the first turn, or drop 'answers'"))
    conversations = obj.get("conversations")
    if isinstance(conversations, list):
        if not conversations:
            problems.append(("'conversations' is empty", "give at least one turn"))
        next_image_number = 1
        for i, turn in enumerate(conversations):
            problems += _turn_problems(turn, i, next_image_number)
            if isinstance(turn, dict) and isinstance(turn.get("images", []), list):
                next_image_number += len(turn.get("images", []))
    return problems


def parse_line(text: str | bytes) -> tuple[Any, list[tuple[str, str]]]:
    """Parse one jsonl line (text, or bytes to decode as UTF-8); return the object and its structural problems."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, [(f"not UTF-8 text (byte {e.object[e.start]:#04x} at byte {e.start + 1} of the line: {e.reason})",
                           "save the file as UTF-8")]
    if not text.strip():
        return None, [("empty line", "remove blank lines; every line must hold one record")]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, [(f"invalid JSON ({e.msg} at column {e.colno})", f"write one JSON object per line, like {FORMAT_HINT}")]
    return obj, record_problems(obj)


def numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Raw lines, each decoded on its own by `parse_line`: a byte that is not UTF-8 is reported on
    its own line, and the lines after it are still checked."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            yield number, line


# ---------------------------------------------------------------------------------------------
# Reading and writing


def read_records(path: str | os.PathLike) -> list[Record]:
    """Every record of a jsonl file; a UserError `file:line: problem — fix` on the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found — check the dataset folder and name")
    records = []
    first_seen: dict[str, str] = {}  # id -> "file:line"
    for number, text in numbered_lines(path):
        obj, problems = parse_line(text)
        if not problems and obj["id"] in first_seen:
            problems = [duplicate_id(obj["id"], first_seen)]
        if problems:
            raise UserError(str(Problem(str(path), number, *problems[0])))
        first_seen[obj["id"]] = f"{path}:{number}"
        records.append(Record.from_dict(obj))
    return records


def duplicate_id(record_id: str, first_seen: dict[str, str]) -> tuple[str, str]:
    """(problem, fix) of an id seen before at `first_seen[record_id]` ("file:line")."""
    return (f"duplicate id {record_id!r} (first used at {first_seen[record_id]})",
            "give every record of every split its own id")


def write_records(path: str | os.PathLike, records: Iterable[Record | dict]) -> int:
    """Write records one a line; return how many were written."""
    return write_jsonl(path, (r.to_dict() if isinstance(r, Record) else r for r in records))


def first_turn_answers(records: Sequence[Record]) -> list[str]:
    """Each record's first assistant text, normalised as accuracy compares answers."""
    return [normalize_answer(record.conversations[0].assistant) for record in records]
