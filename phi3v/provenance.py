"""What a run came from: code commit, package versions, model, data hashes, hardware, config."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

from phi3v import lockfile, numerics

PACKAGES = ("phi3v", "torch", "transformers", "tokenizers", "accelerate", "peft", "datasets",
            "safetensors", "huggingface-hub", "bitsandbytes", "deepspeed", "flash-attn", "pillow",
            "av", "snakemake")

# A model folder may carry this file to say where its weights came from (hub id + revision).
MODEL_SOURCE_FILE = "provenance.json"


def git_state(repo_dir: str | os.PathLike | None = None) -> dict:
    """Commit of the code and whether the working tree differs from it (None outside a checkout)."""
    repo_dir = Path(repo_dir or Path(__file__).resolve().parent.parent)

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True,
                                    timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def package_versions(names=PACKAGES) -> dict:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dataset_hashes(data_dir: str | os.PathLike) -> dict:
    """sha256 of every jsonl file, plus one digest over all images (relative path + content)."""
    data_dir = Path(data_dir)
    hashes = {p.name: sha256_file(p) for p in sorted(data_dir.glob("*.jsonl"))}
    images_dir = data_dir / "images"
    if images_dir.is_dir():
        digest = hashlib.sha256()
        count = 0
        for path in sorted(p for p in images_dir.rglob("*") if p.is_file()):
            digest.update(path.relative_to(images_dir).as_posix().encode())
            digest.update(sha256_file(path).encode())
            count += 1
        hashes["images"] = {"sha256": digest.hexdigest(), "files": count}
    return hashes


def hardware() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_model": numerics.cpu_model(),
            "cpu_count": os.cpu_count(),
            "cuda": torch.version.cuda, "gpus": []}
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append({"name": props.name,
                                 "memory_gib": round(props.total_memory / 2**30, 1)})
    return info


def model_source(model_dir: str | os.PathLike) -> dict:
    """Model id and revision from the folder's own provenance file, else the config's hash."""
    model_dir = Path(model_dir)
    source_file = model_dir / MODEL_SOURCE_FILE
    if source_file.is_file():
        recorded = json.loads(source_file.read_text()).get("model", {})
        return {"path": str(model_dir), "id": recorded.get("id"),
                "revision": recorded.get("revision")}
    config = model_dir / "config.json"
    return {"path": str(model_dir), "id": None,
            "revision": sha256_file(config) if config.is_file() else None}


def collect(run: dict, *, model_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
            seed: int | None = None, extra: dict | None = None) -> dict:
    """Everything needed to say what produced a result; `run` is the full resolved run config."""
    record = {
        "git": git_state(),
        "packages": package_versions(),
        "lock": lockfile.provenance(),
        "model": model_source(model_dir),
        "dataset": {"path": str(data_dir), "files": dataset_hashes(data_dir)} if data_dir else None,
        "hardware": hardware(),
        "numerics": numerics.settings(),
        "seed": seed if seed is not None else run.get("seed"),
        "run": dict(run),
    }
    if extra:
        record.update(extra)
    return record
