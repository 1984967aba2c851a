"""Checks on the model files other machines hand us, before anything reads them.

- safetensors weights: the header and the file size are checked (by safetensors itself) before any
  loader reads them, so a file cut short by an interrupted copy or download, or one that is not
  safetensors at all, is one clear error naming the file and the fix instead of a traceback
  (`SafetensorError`, or `OverflowError`/`MemoryError` where a header length was trusted).
- a checkpoint's files (`folder_damage`): safetensors as above, `torch.save` files, JSON.
- hub ids: resolved through huggingface_hub, so a model that is not in the cache while offline is
  reported as that (with the cache folder and the command that fills it); `model_folder` finds the
  local folder of a model folder or hub id for every `from_pretrained` here.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from phi3v.errors import UserError

TORCH_SAVE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")  # what Accelerate and DeepSpeed write with torch.save
REPLACE_FIX = "replace it with a complete copy (copy or download it again, or rerun the step that wrote it)"


class DamagedFile(UserError):
    """A weights file that is not a complete, well-formed file of its format."""


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why a safetensors file cannot be read (None: its header and size check out).

    safetensors' own `safe_open` checks the header length against the file, the JSON header, and that
    the tensors' byte ranges exactly fill the rest; it reads the header only.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return None
    except (SafetensorError, OSError) as error:
        return str(error)


def safetensors_header(path: str | os.PathLike, fix: str = REPLACE_FIX) -> tuple[int, dict]:
    """(header length, parsed header with every tensor's data_offsets) of a safetensors file that checks out."""
    path = Path(path)
    if (problem := safetensors_problem(path)) is not None:
        raise DamagedFile(f"{path} is not a complete safetensors file ({problem}): it is damaged or was cut "
                          f"short — {fix}.")
    # By hand: safe_open does not give the tensors' byte offsets, which the fingerprint samples.
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))  # the format: u64 header length, JSON header, data
        return header_size, json.loads(f.read(header_size))


def check_weight_files(folder: str | os.PathLike, fix: str = REPLACE_FIX) -> None:
    """Check the header and size of every safetensors file of a model or adapter folder."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        safetensors_header(path, fix)


def file_damage(path: Path) -> str | None:
    """Why a file a checkpoint holds cannot be read back (None: its format checks out).

    Checked cheaply, without loading: safetensors headers and sizes, the zip directory that ends
    every `torch.save` file (a cut-short file has none), and JSON.
    """
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if path.suffix in TORCH_SAVE_SUFFIXES:
        try:
            with zipfile.ZipFile(path):
                return None
        except (zipfile.BadZipFile, OSError) as error:
            return f"not a complete torch.save file ({error})"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"not valid JSON ({error})"
    return None


def folder_damage(folder: str | os.PathLike) -> str | None:
    """`file: why` for the first damaged file under `folder` (see `file_damage`), or None."""
    folder = Path(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if (why := file_damage(path)) is not None:
            return f"{path.relative_to(folder)}: {why}"
    return None


def hub_model_folder(repo_id: str, *, revision: str | None = None, cache_dir=None, **hub_options) -> Path:
    """The cache folder of hub model `repo_id` at `revision`, its config.json fetched (or found in the cache
    when offline); a model that cannot be had is one UserError saying why and what to do."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir, **hub_options)).parent
    except LocalEntryNotFoundError:
        cache = cache_dir or constants.HF_HUB_CACHE
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "local_files_only is set"
               if hub_options.get("local_files_only") else "the hub cannot be reached")
        raise UserError(
            f"model {repo_id}{at} is not in the Hugging Face cache ({cache}, HF_HOME={constants.HF_HOME}) and {why}: "
            f"download it while online (`hf download {repo_id}{' --revision ' + revision if revision else ''}` fills "
            "this cache), or point HF_HOME at a cache that holds it, or give a local model folder."
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"model {repo_id} has no revision {revision!r} on the hub: check the branch, tag or commit.") from None
    except RepositoryNotFoundError:
        raise UserError(f"model {repo_id} is not on the hub (or is private or gated): check the id, and log in "
                        "with `hf auth login` if it needs a token.") from None
    except EntryNotFoundError:
        raise UserError(f"{repo_id}{at} has no config.json: it is not a model repository.") from None


def is_hub_id(name: str) -> bool:
    """A hub repository id ("org/name") rather than a local path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


HUB_OPTIONS = ("revision", "cache_dir", "token", "local_files_only")  # from_pretrained keywords that find a hub model


def model_folder(source, **options) -> Path:
    """The local folder of a model folder or hub id (the hub cache's snapshot, its config.json fetched or found
    there offline); a local path that does not exist, or a hub model that cannot be had, is refused here.
    `options`: from_pretrained's keywords; those in `HUB_OPTIONS` are used."""
    source = str(source)
    if os.path.isdir(source):
        return Path(source)
    if not is_hub_id(source):
        raise UserError(f"model folder {source} does not exist: build or download the model first (or give a hub id).")
    return hub_model_folder(source, **{key: options[key] for key in HUB_OPTIONS if options.get(key) is not None})


def check_source(source, **options) -> str:
    """A local model folder or hub id, as a string, once `model_folder` found it."""
    model_folder(source, **options)
    return str(source)
