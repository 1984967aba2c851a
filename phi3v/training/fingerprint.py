"""What determines a training run's trajectory, as plain data a checkpoint records.

A checkpoint may only be resumed by the run that wrote it: the same resolved run config, base model,
training data, training code, numerical packages, CPU numerics and process count. Each part is hashed
cheaply:

- run config: `RunConfig.to_dict()` less the fields declared not to change the weights
  (`run_config.NOT_TRAJECTORY`: when to save, trackers, loader workers).
- base model: every file's sha256, except `*.safetensors` weights, which record their header (every
  tensor's name, dtype, shape and byte range), their size, and the first and last bytes of every
  tensor. Any other architecture, vocabulary, dtype or tensor set changes the header; any other set
  of weights of the same shape (another seed, fine-tune or hub revision) changes every trained
  tensor, so its sampled bytes. Only a hand edit inside a tensor would go unseen, and no step of
  the workflow edits a base model in place. This reads a few MiB instead of the whole 8 GB model.
- training data: the train jsonl's sha256 (it names every image and answer), and the name and size
  of every image file, which almost always change when a rebuild writes other pixels.
- code: sha256 of the modules that compute the model, the data and the training loop.
- packages: versions of the libraries whose kernels compute it; processes: the world size, which sets
  how micro-batches are grouped and how many RNG states a checkpoint holds.
- numerics: `phi3v.numerics.settings()` (pinned or native mode, the ISA caps, the thread count):
  the same step on 1 or 2 threads rounds differently, so a resume across them would give weights
  that match neither run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import phi3v
from phi3v import numerics
from phi3v.model_files import safetensors_header
from phi3v.provenance import package_versions, sha256_file

from .run_config import NOT_TRAJECTORY, RunConfig

PACKAGE_ROOT = Path(phi3v.__file__).resolve().parent
# Folders (their *.py, not sub-folders) and modules whose code computes a run's weights.
CODE = ("training", "data", "modeling_phi3v.py", "configuration_phi3v.py", "processing_phi3v.py",
        "image_processing_phi3v.py", "image_files.py", "hd_geometry.py", "model_sizes.py", "numerics.py")
PACKAGES = ("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "flash-attn")
TENSOR_SAMPLE_BYTES = 4096  # read at each end of every tensor


def run_fingerprint(run: RunConfig, *, base_model, train_jsonl, processes: int) -> dict:
    """Everything that determines `run`'s trajectory (see the module docstring), as JSON-ready data."""
    return {
        "run": {key: value for key, value in run.to_dict().items() if key not in NOT_TRAJECTORY},
        "processes": processes,
        "base_model": model_digests(Path(base_model)),
        "train_data": data_digests(Path(train_jsonl)),
        "code": code_digests(),
        "packages": package_versions(PACKAGES),
        "numerics": numerics.settings(),
    }


def model_digests(folder: Path) -> dict:
    """{relative file name: digest} of a model folder (sampled for safetensors weights)."""
    return {path.relative_to(folder).as_posix(): (safetensors_digest(path) if path.suffix == ".safetensors"
                                                  else sha256_file(path))
            for path in sorted(folder.rglob("*")) if path.is_file() and not path.name.startswith(".")}


def safetensors_digest(path: Path) -> str:
    """sha256 over the file size, the header and both ends of every tensor's bytes."""
    # By hand: the safetensors library reads tensors whole and decoded, not a few raw bytes of each.
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    header_size, header = safetensors_header(path)  # checked: a damaged file is a clear error
    with open(path, "rb") as f:
        f.seek(8)
        digest.update(f.read(header_size))
        for name, entry in sorted(header.items()):
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            for offset in sorted({begin, max(begin, end - TENSOR_SAMPLE_BYTES)}):
                f.seek(8 + header_size + offset)
                digest.update(f.read(min(TENSOR_SAMPLE_BYTES, end - offset)))
    return "sampled-sha256:" + digest.hexdigest()


def data_digests(train_jsonl: Path) -> dict:
    """The train jsonl's sha256 and one digest over the image folder's file names and sizes."""
    images = train_jsonl.parent / "images"
    listing = hashlib.sha256()
    for path in sorted(images.rglob("*") if images.is_dir() else []):
        if path.is_file():
            listing.update(f"{path.relative_to(images).as_posix()}\t{path.stat().st_size}\n".encode())
    return {train_jsonl.name: sha256_file(train_jsonl), "images": listing.hexdigest()}


def code_digests() -> dict:
    """{module path: sha256} of the code in `CODE`."""
    files = []
    for entry in CODE:
        path = PACKAGE_ROOT / entry
        files += sorted(path.glob("*.py")) if path.is_dir() else [path]
    return {path.relative_to(PACKAGE_ROOT.parent).as_posix(): sha256_file(path) for path in files}


def differences(recorded: dict, current: dict) -> list[str]:
    """What changed between two fingerprints, one short phrase each (`learning_rate 0.003 -> 0.001`)."""
    changes = []
    for section in dict.fromkeys([*current, *recorded]):  # the run config first: the likeliest change
        old, new = recorded.get(section), current.get(section)
        if old == new:
            continue
        if not (isinstance(old, dict) and isinstance(new, dict)):
            changes.append(f"{section} {old} -> {new}")
            continue
        for key in dict.fromkeys([*new, *old]):
            if old.get(key) == new.get(key):
                continue
            if section in ("run", "packages", "numerics"):  # short values: show them
                changes.append(f"{key} {old.get(key)} -> {new.get(key)}")
            else:  # digests: name the file
                changes.append(f"{section.replace('_', ' ')} {key} changed")
    return changes
