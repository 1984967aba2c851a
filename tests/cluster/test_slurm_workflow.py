"""The workflow through a real SLURM (cluster/local_slurm.sh, nodes on this host) with
profiles/slurm: the demo slice gives the same results as a local run; a speed row on two nodes runs
one torchrun agent per SLURM node, as training on several nodes does; a training job that SLURM
requeues comes back by itself and resumes from its checkpoint."""

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workflow.helpers import REPO, SNAKEMAKE, demo_slice_config

RUN = "full-bf16-sdpa"
TARGETS = [f"eval/docvqa/{RUN}/scores.json", f"runs/docvqa/{RUN}/metrics.json"]
RULES = ["train", "evaluate"]  # through SLURM; the data and the base model come from the local run
PREPARED = ["raw", "data", "pretrain", "model_config", "base_model"]
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


def start_through_slurm(profile: Path, env: dict, *config: str, targets: list[Path]) -> subprocess.Popen:
    """Snakemake with the SLURM profile; bounded by `timeout`, as a waiting Snakemake ignores SIGTERM.

    Jobs are seen done at the plugin's next status check (its interval grows by 10 s while nothing
    finishes): a job takes 10-20 s through SLURM here.
    """
    command = ["timeout", "-k", "10", "400", *SNAKEMAKE, "--workflow-profile", str(profile), "--config", *config,
               "--", *map(str, targets)]
    env = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_through_slurm(profile: Path, env: dict, *config: str, targets: list[Path]) -> subprocess.CompletedProcess:
    snakemake = start_through_slurm(profile, env, *config, targets=targets)
    stdout, stderr = snakemake.communicate(timeout=430)
    return subprocess.CompletedProcess(snakemake.args, snakemake.returncode, stdout, stderr)


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
    }


SPEED_ROW = "full-sdpa-bf16-2x2"  # on CPUs one process per node: 2 processes on 2 nodes
SPEED_ROWS = "speed={steps: 2, warmup: 1, rows: [{strategy: full, attention: sdpa, precision: bf16, nodes: 2, gpus: 2, effective_batch: 4}]}"


def slurm_jobs(job_ids, env) -> dict[str, dict]:
    """`scontrol show job` of each job id: {id: {field: value}}."""
    jobs = subprocess.run(["scontrol", "show", "job", "--oneliner"], env=env, capture_output=True, text=True)
    fields = [dict(part.split("=", 1) for part in line.split() if "=" in part) for line in jobs.stdout.splitlines()]
    return {job["JobId"]: job for job in fields if job.get("JobId") in set(job_ids)}


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM runs its daemons as root")
@pytest.mark.skipif(not slurm_installed(), reason="SLURM is not installed (.ci/run installs it with apt-get)")
def test_the_workflow_through_slurm(tmp_path, local_demo_slice, two_node_slurm):
    """1. the demo slice's training and evaluation as SLURM jobs give the local run's results
    (weights, predictions, scores); 2. then a speed row on two nodes runs as one SLURM job in which srun starts one torchrun
    agent per node, as training on several nodes does."""
    assert local_demo_slice.run.returncode == 0, local_demo_slice.run.stderr[-3000:]
    results, logs = tmp_path / "results", tmp_path / "slurm_logs"
    profile = slurm_profile(tmp_path / "profile", logs)
    # The local run's inputs of the training job, times kept: Snakemake takes them as done, and the
    # jobs through SLURM are the run's training and evaluation (each data job would cost a status
    # check of 10-20 s; they are ordinary `script:` jobs like these two).
    for folder in PREPARED:
        shutil.copytree(local_demo_slice.results / folder, results / folder)
    config = demo_slice_config(results, runs=[RUN])
    through_slurm = run_through_slurm(profile, two_node_slurm, *config, targets=[results / t for t in TARGETS])
    output = through_slurm.stdout + through_slurm.stderr
    assert through_slurm.returncode == 0, output[-6000:]

    # Every job was a SLURM job: the plugin kept one SLURM log per job, and slurmctld knows them.
    assert sorted(path.name for path in logs.iterdir()) == sorted(f"rule_{rule}" for rule in RULES)
    job_logs = sorted(logs.rglob("*.log"))
    jobs_run = re.findall(r"^rule (\w+):$", output, flags=re.M)  # (a localrule would print `localrule`)
    assert set(jobs_run) == set(RULES) and len(job_logs) == len(jobs_run)
    states = slurm_jobs([path.stem for path in job_logs], two_node_slurm)
    assert len(states) == len(job_logs)
    assert all(job["JobState"] == "COMPLETED" and job["Partition"] == "debug" for job in states.values())
    assert results_of(results) == results_of(local_demo_slice.results)

    # The speed row, on the data and base model already built: the only job is the row.
    out = results / "speed" / f"{SPEED_ROW}.json"
    deepspeed = importlib.util.find_spec("deepspeed") is not None  # the full-parameter row under ZeRO-2 if installed
    speed = run_through_slurm(profile, two_node_slurm, *config, "hardware={nodes: 2}", "runs_filter=[speed/*]",
                              SPEED_ROWS, f"train={{deepspeed: {str(deepspeed).lower()}}}", targets=[out])
    output = speed.stdout + speed.stderr
    assert speed.returncode == 0, output[-6000:]
    assert re.findall(r"^rule (\w+):$", output, flags=re.M) == ["benchmark_speed"]
    log = (results / "logs" / "speed" / f"{SPEED_ROW}.log").read_text()
    assert "launch: srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in log and "--nnodes=2" in log
    [job_log] = logs.rglob(f"rule_benchmark_speed/{SPEED_ROW}/*.log")
    job = slurm_jobs([job_log.stem], two_node_slurm)[job_log.stem]
    assert (job["JobState"], job["NumNodes"], job["NumTasks"]) == ("COMPLETED", "2", "2")

    # The result says what ran: a process on each SLURM node, under DeepSpeed where it is installed.
    result = json.loads(out.read_text())
    assert (result["nodes"], result["node_names"], result["processes"]) == (2, ["node1", "node2"], 2)
    assert result["deepspeed"] is deepspeed
    assert result["img_per_s"] > 0 and result["steps_measured"] == 2
    assert not [path for path in (results / "speed").iterdir() if path.name.startswith(".")]  # no scratch left


@pytest.fixture
def one_node_slurm(tmp_path):
    with running_slurm(tmp_path / "slurm", nodes=1) as env:
        yield env


# Long enough that the job is still training when its first checkpoint appears.
REQUEUED_RUN = "run_overrides={max_steps: 16, epochs: 1, checkpoint_every: 2}"


def slurm_job_state(job_id: str, env: dict) -> dict:
    return slurm_jobs([job_id], env).get(job_id, {})


def queue_state(job_id: str, env: dict) -> str:
    """squeue's state and reason of a job (`COMPLETING None`, `PENDING BeginTime`, ...)."""
    shown = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T %r"], env=env,
                           capture_output=True, text=True)
    return shown.stdout.strip()


def the_run_json(config: list[str], dataset: str, run: str) -> tuple[str, int]:
    """(run config as JSON, training threads) of `run`, resolved from `--config` values as the workflow does."""
    from phi3v.workflow import settings

    overrides = {"preset": "demo"}  # config.yaml
    overrides.update((key, yaml.safe_load(value)) for key, value in (item.split("=", 1) for item in config))
    resolved = settings.resolve_config(overrides)
    return settings.run_config(resolved, dataset, run).to_json(), resolved["resources"]["train"]["threads"]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM runs its daemons as root")
@pytest.mark.skipif(not slurm_installed(), reason="SLURM is not installed (.ci/run installs it with apt-get)")
def test_a_requeued_training_job_resumes_from_its_checkpoint(tmp_path, local_demo_slice, one_node_slurm):
    """profiles/slurm submits with --requeue: a training job that SLURM requeues while it runs (as on
    preemption) starts again by itself, resumes from its newest checkpoint, and ends bit-identical
    to an uninterrupted run."""
    from phi3v.layout import ResultsLayout
    from phi3v.training.checkpoint import complete_checkpoints

    assert local_demo_slice.run.returncode == 0, local_demo_slice.run.stderr[-3000:]
    results, env = tmp_path / "results", one_node_slurm
    layout = ResultsLayout(results)
    for folder in PREPARED:
        shutil.copytree(local_demo_slice.results / folder, results / folder)
    config = [*demo_slice_config(results, runs=[RUN]), REQUEUED_RUN]
    run_json, threads = the_run_json(config, "docvqa", RUN)
    # The uninterrupted reference, beside the SLURM run: the same run config and thread count.
    straight = subprocess.Popen(
        [sys.executable, "-m", "phi3v.training.train", "--run-json", run_json, "--base-model", str(layout.base_model),
         "--data-dir", str(layout.data("docvqa")), "--dataset", "docvqa", "--out-dir", str(tmp_path / "straight"),
         "--checkpoint-dir", str(tmp_path / "straight_checkpoints")],
        env={**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    profile = slurm_profile(tmp_path / "profile", tmp_path / "slurm_logs")
    snakemake = start_through_slurm(profile, env, *config, targets=[layout.metrics("docvqa", RUN)])
    try:
        deadline = time.monotonic() + 300
        while not complete_checkpoints(layout.checkpoints("docvqa", RUN)):
            assert snakemake.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.1)
        squeue = subprocess.run(["squeue", "--noheader", "--format=%i"], env=env, capture_output=True, text=True)
        [job_id] = squeue.stdout.split()
        requeue = subprocess.run(["scontrol", "requeue", job_id], env=env, capture_output=True, text=True)
        assert requeue.returncode == 0, requeue.stderr
        # SLURM holds a requeued job until its begin time (about 2 minutes later) so that no new start
        # carries a credential the kill revoked (one started in the kill's second fails): start it 3 s on.
        while queue_state(job_id, env) != "PENDING BeginTime":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+3"], env=env, check=True)
        stdout, stderr = snakemake.communicate(timeout=430)
        assert snakemake.returncode == 0, (stdout + stderr)[-6000:]
        assert straight.wait(timeout=300) == 0, straight.stderr.read()[-3000:]
    finally:
        if snakemake.poll() is None:  # `timeout` passes SIGINT on: Snakemake cancels its job and stops
            snakemake.send_signal(signal.SIGINT)
            snakemake.wait(timeout=60)
        if straight.poll() is None:
            straight.kill()

    job = slurm_job_state(job_id, env)
    assert (job["JobState"], job["Requeue"], job["Restarts"]) == ("COMPLETED", "1", "1")
    # The second start resumed (the job's log is rewritten by each start) ...
    log = layout.log("train", "docvqa", RUN).read_text()
    [resumed_at] = re.findall(rf"run '{RUN}': resuming from step (\d+)", log)
    assert 2 <= int(resumed_at) < 16
    # ... and ended where an uninterrupted run ends, to the bit.
    provenance = json.loads(layout.provenance("docvqa", RUN).read_text())
    assert provenance["run"] == json.loads(run_json)
    assert weights_hash(layout.model("docvqa", RUN)) == weights_hash(tmp_path / "straight" / "model")
    losses = [[entry["loss"] for entry in map(json.loads, (folder / "train_log.jsonl").read_text().splitlines())]
              for folder in (layout.run_dir("docvqa", RUN), tmp_path / "straight")]
    assert losses[0] == losses[1] and len(losses[0]) == 16
