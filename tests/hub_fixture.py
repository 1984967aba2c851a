"""Point huggingface_hub (and transformers, which asks it) at a local hub cache, offline, for one test."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants


def use_hub_cache(monkeypatch, hf_home: str | os.PathLike | None = None, *, hub_dir=None, offline: bool = True) -> None:
    """As `HF_HOME=hf_home HF_HUB_OFFLINE=1` would at start-up: the environment (for subprocesses) and the
    constants huggingface_hub read when it was imported. `hub_dir` sets the cache folder alone."""
    hub_dir = Path(hub_dir) if hub_dir is not None else Path(hf_home) / "hub"
    if hf_home is not None:
        monkeypatch.setenv("HF_HOME", str(hf_home))
        monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_dir))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
