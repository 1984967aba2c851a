"""The demo slice through a real single-node SLURM (cluster/local_slurm.sh) with profiles/slurm:
the jobs must go through SLURM and give the same results as a local run."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from workflow.helpers import REPO, SNAKEMAKE

RUN = "full-bf16-sdpa"
SLICE = [
    f"runs_filter=[docvqa/{RUN}]",
    "datasets={docvqa: {sizes: {train: 16, test: 8}}}",
    "pretrain={corpus_size: 16, steps: 4}",
    "run_overrides={max_steps: 3, epochs: 1}",
    "evaluation={batch_size: 4, max_samples: 4, max_new_tokens: 4}",
]
TARGETS = [f"eval/docvqa/{RUN}/scores.json", f"runs/docvqa/{RUN}/metrics.json"]
RULES = ["synthesize_raw", "convert", "pretrain_corpus", "build_demo_model", "train", "evaluate"]
SLURM_TOOLS = ["munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue"]


def slurm_installed() -> bool:
    return all(shutil.which(tool) or os.access(f"/usr/sbin/{tool}", os.X_OK) for tool in SLURM_TOOLS)


@pytest.fixture
def local_slurm(tmp_path):
    """A running single-node SLURM; yields the environment that points at it; stopped by PID."""
    state = tmp_path / "slurm"
    script = str(REPO / "cluster" / "local_slurm.sh")
    try:
        started = subprocess.run([script, "start", str(state)], capture_output=True, text=True, timeout=90)
        assert started.returncode == 0, started.stderr
        # The script's client commands (state/bin) carry SLURM_CONF also into job steps.
        yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "PATH": f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    finally:
        subprocess.run([script, "stop", str(state)], capture_output=True, timeout=60)


def slurm_profile(folder: Path, logs: Path) -> Path:
    """profiles/slurm with the local partition, no account and fast status checks."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"].update(slurm_partition="debug", mem_mb=1000)
    del profile["default-resources"]["slurm_account"]
    profile.update({"slurm-no-account": True, "slurm-init-seconds-before-status-checks": 1,
                    "slurm-logdir": str(logs), "latency-wait": 5, "jobs": 2})
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def run_slice(results: Path, *options: str, env=os.environ) -> subprocess.CompletedProcess:
    """The slice into `results`; bounded by `timeout`, as a waiting Snakemake ignores SIGTERM."""
    targets = [str(results / target) for target in TARGETS]
    command = ["timeout", "-k", "10", "170", *SNAKEMAKE, *options, "--config", f"results_dir={results}", *SLICE,
               "--", *targets]
    env = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=200)


def weights_hash(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def results_of(results: Path) -> dict:
    return {
        "scores": json.loads((results / "eval" / "docvqa" / RUN / "scores.json").read_text()),
        "predictions": (results / "eval" / "docvqa" / RUN / "predictions.jsonl").read_text(),
        "weights": weights_hash(results / "runs" / "docvqa" / RUN / "model"),
        "base": weights_hash(results / "base_model"),
    }


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM runs its daemons as root")
@pytest.mark.skipif(not slurm_installed(), reason="SLURM is not installed (.ci/run installs it with apt-get)")
def test_demo_slice_through_slurm_equals_a_local_run(tmp_path, local_slurm):
    local = run_slice(tmp_path / "local", "--cores", "2")
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]

    logs = tmp_path / "slurm_logs"
    profile = slurm_profile(tmp_path / "profile", logs)
    through_slurm = run_slice(tmp_path / "slurm", "--workflow-profile", str(profile), env=local_slurm)
    output = through_slurm.stdout + through_slurm.stderr
    assert through_slurm.returncode == 0, output[-6000:]

    # Every job was a SLURM job: the plugin kept one SLURM log per job, and slurmctld knows them.
    assert sorted(path.name for path in logs.iterdir()) == sorted(f"rule_{rule}" for rule in RULES)
    job_logs = sorted(logs.rglob("*.log"))
    assert len(job_logs) == len(RULES)
    job_ids = {path.stem for path in job_logs}
    jobs = subprocess.run(["scontrol", "show", "job", "--oneliner"], env=local_slurm, capture_output=True, text=True)
    states = {fields["JobId"]: fields for fields in (dict(part.split("=", 1) for part in line.split() if "=" in part)
                                                    for line in jobs.stdout.splitlines())}
    assert job_ids <= set(states)
    assert all(states[job]["JobState"] == "COMPLETED" and states[job]["Partition"] == "debug" for job in job_ids)

    assert results_of(tmp_path / "slurm") == results_of(tmp_path / "local")
