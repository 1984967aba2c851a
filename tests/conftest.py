"""Fixtures every test folder may use: the local hub cache (`HF_HOME`) of phi3v.hub_cache."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub_fixture import use_hub_cache
from phi3v.hub_cache import write_test_hub


@dataclass(frozen=True)
class HubCache:
    hf_home: Path
    commits: dict[str, str]  # repo id -> commit of its `main`
    build_seconds: float

    @property
    def hub_dir(self) -> Path:
        return self.hf_home / "hub"


@pytest.fixture(scope="session")
def test_hub(tmp_path_factory) -> HubCache:
    """The model and the four datasets in the hub cache's layout (built once a session, about a second)."""
    hf_home = tmp_path_factory.mktemp("hf") / "home"
    start = time.perf_counter()
    commits = write_test_hub(hf_home)
    return HubCache(hf_home, commits, time.perf_counter() - start)


@pytest.fixture
def offline_hub(test_hub, monkeypatch) -> HubCache:
    """`HF_HOME` = the test hub and `HF_HUB_OFFLINE=1` for this test: hub ids resolve from the cache alone."""
    use_hub_cache(monkeypatch, test_hub.hf_home)
    return test_hub


@dataclass(frozen=True)
class DemoSlice:
    results: Path
    config: list[str]           # its `--config` values
    run: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def local_demo_slice(tmp_path_factory) -> DemoSlice:
    """The demo slice (tests/workflow/helpers.py) run once with `--cores 2`, for the tests of the
    workflow on one machine and as the reference of the SLURM run. Under pytest-xdist the workers
    share it: the first to take the lock runs it, the others read its result."""
    from filelock import FileLock

    from workflow.helpers import demo_slice_config, run_snakemake

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    results, record = shared / "demo-slice" / "results", shared / "demo-slice.json"
    config = demo_slice_config(results)
    with FileLock(str(shared / "demo-slice.lock")):
        if not record.exists():
            done = run_snakemake("--cores", "2", "--config", *config, timeout=600)
            record.write_text(json.dumps({"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}))
    run = subprocess.CompletedProcess(["snakemake"], **json.loads(record.read_text()))
    return DemoSlice(results, config, run)
