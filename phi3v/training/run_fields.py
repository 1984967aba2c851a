"""What `RunConfig`'s field declarations generate: the schema's run fields and speed-row settings, and
README's table of the speed settings, each a block between marker lines in its file.

    python -m phi3v.training.run_fields           # rewrite the blocks from RunConfig
    python -m phi3v.training.run_fields --check   # exit 1 when a file differs from RunConfig

A new run field is one `setting(...)` in run_config.py; this writes where the workflow and README show it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from phi3v.errors import UserError, entry_point

from .run_config import JOB, OPTION, ROW_SETTINGS, RunConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path("schemas") / "config.schema.yaml"
README = Path("README.md")
# A field's Python type -> its JSON schema type (optional fields may also be null).
JSON_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def field_schema(field: dataclasses.Field) -> dict:
    """The JSON schema of one run field: type or choices, bounds, description."""
    meta = field.metadata
    annotation = str(field.type)
    optional = annotation.endswith(" | None")
    schema: dict = {}
    if annotation.startswith("tuple["):  # a list of choices, each at most once
        schema.update(type="array", uniqueItems=True, items={"enum": list(meta["choices"])})
    elif meta["choices"] is not None:
        schema["enum"] = list(meta["choices"])
    else:
        kind = JSON_TYPES[annotation.removesuffix(" | None")]
        schema["type"] = [kind, "null"] if optional else kind
    for key, name in (("minimum", "minimum"), ("above", "exclusiveMinimum"), ("maximum", "maximum")):
        if meta[key] is not None:
            schema[name] = meta[key]
    if meta["about"]:
        schema["description"] = ("beyond the recipe: " if meta["kind"] == OPTION else "") + meta["about"]
    return schema


def flow(value) -> str:
    """One YAML flow-style line, as the schema file writes its entries."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()


def run_fields_lines() -> list[str]:
    """`$defs/run_fields/properties` entries: every field a preset may set (not the job's `dataset`, `run`)."""
    return [f"      {field.name}: {flow(field_schema(field))}" for field in dataclasses.fields(RunConfig)
            if field.metadata["kind"] != JOB]


def speed_row_lines() -> list[str]:
    """`$defs/speed_row/properties` entries: the run fields a speed row may set, as the run fields."""
    return [f"      {name}: {flow({'$ref': f'#/$defs/run_fields/properties/{name}'})}" for name in ROW_SETTINGS]


def readme_lines() -> list[str]:
    """README's table of the settings that change how fast a step runs, never what it computes."""
    rows = [f"| `{field.name}` | {field.metadata['about']} |" for field in dataclasses.fields(RunConfig)
            if field.metadata["speed_only"]]
    return ["| field | what it does |", "|---|---|", *rows]


def begin_marker(name: str, comment: str) -> str:
    return f"{comment} BEGIN {name}: generated from RunConfig by `python -m phi3v.training.run_fields`"


def end_marker(name: str, comment: str) -> str:
    return f"{comment} END {name}"


# file -> [(block name, comment syntax, the block's lines)]
def blocks() -> dict[Path, list[tuple[str, str, list[str]]]]:
    return {SCHEMA: [("run_fields", "#", run_fields_lines()), ("speed_row settings", "#", speed_row_lines())],
            README: [("speed settings table", "<!--", readme_lines())]}


def replace_block(text: str, name: str, comment: str, lines: list[str], where: Path) -> str:
    """`text` with the lines between the block's marker lines replaced by `lines` (markers kept)."""
    close = " -->" if comment == "<!--" else ""
    begin, end = begin_marker(name, comment) + close, end_marker(name, comment) + close
    source = text.split("\n")
    indexes = {marker: [i for i, line in enumerate(source) if line.strip() == marker] for marker in (begin, end)}
    if len(indexes[begin]) != 1 or len(indexes[end]) != 1 or indexes[begin][0] > indexes[end][0]:
        raise UserError(f"{where}: expected one line `{begin}` and after it one line `{end}`; restore them "
                        "from git")
    first, last = indexes[begin][0], indexes[end][0]
    indent = source[first][:len(source[first]) - len(source[first].lstrip())]
    body = [line if line.startswith(indent) else indent + line for line in lines] if comment == "#" else lines
    return "\n".join(source[:first + 1] + body + source[last:])


def generated(path: Path, text: str) -> str:
    for name, comment, lines in blocks()[path]:
        text = replace_block(text, name, comment, lines, path)
    return text


def stale_files(repo_root: Path = REPO_ROOT, write: bool = False) -> list[Path]:
    """The files whose generated blocks differ from RunConfig (rewritten when `write`)."""
    stale = []
    for path in blocks():
        text = (repo_root / path).read_text(encoding="utf-8")
        new = generated(path, text)
        if new != text:
            stale.append(path)
            if write:
                (repo_root / path).write_text(new, encoding="utf-8")
    return stale


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi3v.training.run_fields", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which files differ (exit status 1)")
    args = parser.parse_args(argv)
    stale = stale_files(write=not args.check)
    for path in stale:
        print(f"{path}: {'differs from RunConfig' if args.check else 'rewritten'}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
