"""Checks on the model files other machines hand us, before anything reads them.

- safetensors weights: the header and the file size are checked against the format (u64 header
  length, JSON header, tensor bytes that exactly fill the rest), so a file cut short by an
  interrupted copy or download, or one that is not safetensors at all, is one clear error naming the
  file instead of a `SafetensorError`, `OverflowError` or `MemoryError` deep in a loader.
- hub ids: resolved through huggingface_hub, so a model that is not in the cache while offline is
  reported as that (with the cache folder and the command that fills it).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from phi3v.errors import UserError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit on the JSON header
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
TORCH_SAVE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")  # what Accelerate and DeepSpeed write with torch.save
REPLACE_FIX = "replace it with a complete copy (copy or download it again, or rerun the step that wrote it)"


class DamagedFile(UserError):
    """A weights file that is not a complete, well-formed file of its format."""


def safetensors_header(path: str | os.PathLike, fix: str = REPLACE_FIX) -> tuple[int, dict]:
    """(header length, parsed header) of a safetensors file whose header and size check out.

    By hand: the safetensors library reports a damaged file as an untyped error without saying which
    file, and the fingerprint reads headers without loading tensors.
    """
    path = Path(path)
    problem, header_size, header = _read_safetensors_header(path)
    if problem:
        raise DamagedFile(f"{path} is not a complete safetensors file ({problem}): it is damaged or was cut "
                          f"short — {fix}.")
    return header_size, header


def _read_safetensors_header(path: Path) -> tuple[str | None, int, dict]:
    """(problem or None, header length, header)."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than the 8-byte header length", 0, {}
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))  # the format: u64 header length, JSON header, data
        if header_size > min(size - 8, MAX_HEADER_BYTES):
            return f"its first 8 bytes give a {header_size}-byte header but the file holds {size} bytes", 0, {}
        raw = f.read(header_size)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "its header is not JSON", 0, {}
    if not isinstance(header, dict):
        return "its header is not a JSON object", 0, {}
    data_bytes = size - 8 - header_size
    end_of_data = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_entry_problem(entry, data_bytes)
        if problem:
            return f"tensor {name!r}: {problem}", 0, {}
        end_of_data = max(end_of_data, entry["data_offsets"][1])
    if end_of_data != data_bytes:
        return f"its tensors need {end_of_data} bytes of data, the file holds {data_bytes}", 0, {}
    return None, header_size, header


def _tensor_entry_problem(entry, data_bytes: int) -> str | None:
    if not (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2):
        return "no shape and data_offsets"
    begin, end = entry["data_offsets"]
    shape = entry["shape"]
    if not all(isinstance(n, int) and n >= 0 for n in [begin, end, *shape]) or begin > end:
        return f"invalid shape {shape} or data offsets {entry['data_offsets']}"
    if end > data_bytes:
        return f"its bytes end at {end}, past the {data_bytes} bytes of data the file holds"
    element = DTYPE_BYTES.get(entry.get("dtype"))
    count = 1
    for n in shape:
        count *= n
    if element is not None and (end - begin) != count * element:
        return f"{entry['dtype']} {shape} needs {count * element} bytes, its offsets span {end - begin}"
    return None


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
        return _read_safetensors_header(path)[0]
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
