"""The workflow through a real SLURM (cluster/local_slurm.sh) with profiles/slurm: the demo slice
on one node gives the same results as a local run; a speed row on two nodes runs one torchrun agent
per SLURM node, as training on several nodes does."""

import contextlib
import hashlib
import importlib.util
import json
import os
import re
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


@contextlib.contextmanager
def running_slurm(state: Path, nodes: int = 1):
    """A running SLURM of `nodes` nodes on this host; yields the environment that points at it; stopped by PID."""
    script = str(REPO / "cluster" / "local_slurm.sh")
    try:
        started = subprocess.run([script, "start", str(state), str(nodes)], capture_output=True, text=True, timeout=90)
        assert started.returncode == 0, started.stderr
        # The script's client commands (state/bin) carry SLURM_CONF also into job steps.
        yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "PATH": f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    finally:
        subprocess.run([script, "stop", str(state)], capture_output=True, timeout=60)


@pytest.fixture
def local_slurm(tmp_path):
    with running_slurm(tmp_path / "slurm") as env:
        yield env


@pytest.fixture
def two_node_slurm(tmp_path):
    """Two SLURM nodes (node1, node2), each its own slurmd, on this one host."""
    with running_slurm(tmp_path / "slurm", nodes=2) as env:
        yield env


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
    """The slice into `results`; bounded by `timeout`, as a waiting Snakemake ignores SIGTERM.

    Twelve jobs one after another, each seen done at the plugin's next status check (its interval
    grows by 10 s while nothing finishes): about 170 s through SLURM on a busy machine, hence 400.
    """
    targets = [str(results / target) for target in TARGETS]
    command = ["timeout", "-k", "10", "400", *SNAKEMAKE, *options, "--config", f"results_dir={results}", *SLICE,
               "--", *targets]
    env = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=430)


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
    # one log per job the local run ran (the demo's base model reads every demo dataset: 4 of some rules)
    local_jobs = re.findall(r"^(?:local)?rule (\w+):$", local.stdout + local.stderr, flags=re.M)
    assert set(local_jobs) == set(RULES) and len(job_logs) == len(local_jobs)
    job_ids = {path.stem for path in job_logs}
    jobs = subprocess.run(["scontrol", "show", "job", "--oneliner"], env=local_slurm, capture_output=True, text=True)
    states = {fields["JobId"]: fields for fields in (dict(part.split("=", 1) for part in line.split() if "=" in part)
                                                    for line in jobs.stdout.splitlines())}
    assert job_ids <= set(states)
    assert all(states[job]["JobState"] == "COMPLETED" and states[job]["Partition"] == "debug" for job in job_ids)

    assert results_of(tmp_path / "slurm") == results_of(tmp_path / "local")


SPEED_ROW = "full-sdpa-bf16-2x2"  # on CPUs one process per node: 2 processes on 2 nodes
SPEED_SLICE = [
    "hardware={nodes: 2}",
    "runs_filter=[speed/*]",
    "datasets={docvqa: {sizes: {train: 16, test: 8}}}",
    "pretrain={corpus_size: 16, steps: 4}",
    "speed={steps: 2, warmup: 1, rows: [{strategy: full, attention: sdpa, precision: bf16, nodes: 2, gpus: 2, effective_batch: 4}]}",
]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM runs its daemons as root")
@pytest.mark.skipif(not slurm_installed(), reason="SLURM is not installed (.ci/run installs it with apt-get)")
def test_a_two_node_speed_row_runs_one_torchrun_agent_per_slurm_node(tmp_path, two_node_slurm):
    results = tmp_path / "results"
    profile = slurm_profile(tmp_path / "profile", tmp_path / "slurm_logs")
    out = results / "speed" / f"{SPEED_ROW}.json"
    command = ["timeout", "-k", "10", "400", *SNAKEMAKE, "--workflow-profile", str(profile),
               "--config", f"results_dir={results}", *SPEED_SLICE, "--", str(out)]
    env = {**two_node_slurm, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=430)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]

    # One SLURM job on both nodes; in it srun starts one torchrun agent per node (`--nnodes=2`).
    log = (results / "logs" / "speed" / f"{SPEED_ROW}.log").read_text()
    assert "launch: srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in log and "--nnodes=2" in log
    [job_log] = (tmp_path / "slurm_logs").rglob(f"rule_benchmark_speed/{SPEED_ROW}/*.log")
    job = subprocess.run(["scontrol", "show", "job", "--oneliner", job_log.stem], env=two_node_slurm,
                         capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in job and "NumNodes=2" in job and "NumTasks=2" in job

    # The result says what ran: a process on each SLURM node, under DeepSpeed where it is installed.
    result = json.loads(out.read_text())
    assert (result["nodes"], result["node_names"], result["processes"]) == (2, ["node1", "node2"], 2)
    assert result["deepspeed"] is (importlib.util.find_spec("deepspeed") is not None)
    assert result["img_per_s"] > 0 and result["steps_measured"] == 2
    assert not [path for path in (results / "speed").iterdir() if path.name.startswith(".")]  # no scratch left
