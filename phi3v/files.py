"""All-or-nothing writes: a file or folder appears under its final name only once complete, so an
interrupted job never leaves an output that Snakemake (or a reader) would take as done."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file name next to `path` to write to; it becomes `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def temp_dir_prefix(final_dir: Path) -> str:
    """The name prefix of `final_dir`'s temporary folders; the writer's process id follows it."""
    return f".{final_dir.name}.tmp-"


def remove_stale_temp_dirs(final_dir: Path) -> list[Path]:
    """Remove the temporary folders of `final_dir` whose writer is gone (killed before it finished).

    One job writes an output at a time (Snakemake locks its outputs), so a temporary folder of this
    output is debris unless its process is still alive on this machine (e.g. a test run beside it).
    """
    removed = []
    prefix = temp_dir_prefix(final_dir)
    for path in final_dir.parent.glob(glob.escape(prefix) + "*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if path.is_dir() and not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_dir(path: str | os.PathLike) -> None:
    """Delete a folder so that a kill mid-way leaves nothing under its name: renamed first to
    `.<name>.deleting` (instant), then deleted; a later `remove_dir` of the same name finishes a
    deletion a kill cut short."""
    path = Path(path)
    doomed = deleting_name(path)
    shutil.rmtree(doomed, ignore_errors=True)
    if path.exists():
        os.replace(path, doomed)
        shutil.rmtree(doomed)


def replace_dir(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the folder `source` to `target`, replacing what is there (deleted as `remove_dir` does)."""
    remove_dir(target)
    os.replace(source, target)


def deleting_name(path: Path) -> Path:
    """Where `remove_dir` moves `path` while it deletes it."""
    return path.with_name(f".{path.name}.deleting")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def current_umask() -> int:
    """The process's umask (reading it means setting it: there is no getter)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_output_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `final_dir`; it replaces `final_dir` if the block succeeds.

    Temporary folders that killed writers left behind are removed first. The folder gets the
    permissions the umask gives a new folder (mkdtemp makes it 0700, private to the user).
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(final_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"{temp_dir_prefix(final_dir)}{os.getpid()}-", dir=final_dir.parent))
    try:
        tmp_dir.chmod(0o777 & ~current_umask())
        yield tmp_dir
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    replace_dir(tmp_dir, final_dir)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
