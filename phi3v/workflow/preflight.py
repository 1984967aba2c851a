"""What the configuration alone shows, said before any job starts: YAML syntax errors with their
line and column, and custom dataset folders that are missing or not folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from phi3v.errors import UserError


def yaml_error_message(path: str | os.PathLike, error: yaml.YAMLError) -> str:
    """`file:line:column: what is wrong — fix`, from PyYAML's mark (1-based line and column)."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error)
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None:
        context += f" that starts at line {context_mark.line + 1}, column {context_mark.column + 1}"
    what = f"{problem} ({context})" if context else problem
    return f"{where}: not valid YAML: {what} — fix the syntax at that line and column"


def check_yaml_syntax(path: str | os.PathLike) -> None:
    """Raise a UserError with line and column if the file exists and is not valid YAML.

    Snakemake's own message for a bad config file says neither, so the workflow's `config.yaml`
    is read here first. (A `--configfile` on the command line is read by Snakemake before any
    workflow code runs; its message cannot be improved from here.)
    """
    path = Path(path)
    if not path.is_file():
        return  # Snakemake reports a missing config file itself
    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(yaml_error_message(path, error)) from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason}) — save the file as UTF-8") from None


def check_custom_dataset_paths(config: dict, workdir: str | os.PathLike = ".") -> None:
    """A custom dataset's `path` must be an existing folder (relative paths: to the working directory)."""
    for name, dataset in config["datasets"].items():
        if dataset.get("source") != "custom" or not dataset.get("path"):
            continue
        where = f"config key `datasets.{name}.path`"
        folder = Path(workdir) / Path(dataset["path"]).expanduser()
        if not folder.exists():
            raise UserError(
                f"{where}: {dataset['path']!r} does not exist (from {Path(workdir).resolve()}) — give the folder "
                f"that holds {name}_<split>.jsonl and images/"
            )
        if not folder.is_dir():
            raise UserError(
                f"{where}: {dataset['path']!r} is a file, not a folder — give the folder that holds "
                f"{name}_<split>.jsonl and images/, not one of its files"
            )
