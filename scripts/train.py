"""One training run: `python -m phi3v.training.train` under the launcher (torchrun for several processes)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)
from common import error_lines, run_step  # noqa: E402
from phi3v.layout import ADAPTER  # noqa: E402


def train_command() -> list[str]:
    nodes, processes_per_node, gpus = snakemake.params.processes
    return [
        sys.executable, "-m", "phi3v.launch",
        "--nodes", str(nodes), "--processes-per-node", str(processes_per_node), "--gpus", str(gpus),
        "--", "phi3v.training.train",
        "--run-json", snakemake.params.run_json,
        "--base-model", snakemake.input.base_model,
        "--data-dir", snakemake.input.data,
        "--dataset", snakemake.wildcards.dataset,
        "--out-dir", snakemake.params.out_dir,
        "--checkpoint-dir", snakemake.params.checkpoint_dir,
    ]


def remove_adapter():
    """A LoRA run's adapter/ is not a declared output (full runs have none), so Snakemake neither
    deletes it before the job nor after a failure: without this a stale one would sit beside a new
    (or a deleted) model/."""
    shutil.rmtree(Path(snakemake.params.out_dir) / ADAPTER, ignore_errors=True)


def announce_resume():
    """Say on the console, not only in the log, whether the run resumes or sets old checkpoints aside."""
    from phi3v.data.records import split_path
    from phi3v.training.checkpoint import ResumePlan
    from phi3v.training.fingerprint import run_fingerprint
    from phi3v.training.run_config import RunConfig

    train_jsonl = split_path(snakemake.input.data, snakemake.wildcards.dataset, "train")
    if not train_jsonl.is_file():
        return  # training itself says what is missing
    run = RunConfig.from_dict(json.loads(snakemake.params.run_json))
    nodes, processes_per_node, _ = snakemake.params.processes
    fingerprint = run_fingerprint(run, base_model=snakemake.input.base_model, train_jsonl=train_jsonl,
                                  processes=nodes * processes_per_node)
    message = ResumePlan.of(snakemake.params.checkpoint_dir, fingerprint).message(run.run)
    if message:  # the training process acts on the same plan and logs the same line
        print(message, file=sys.__stderr__, flush=True)


def train():
    announce_resume()
    command = train_command()
    remove_adapter()
    print("$ " + subprocess.list2cmdline(command), flush=True)
    # The child writes to the same log file as this script.
    completed = subprocess.run(command, stdout=sys.stdout, stderr=subprocess.STDOUT, env=dict(os.environ))
    if completed.returncode:
        remove_adapter()
        sys.stdout.flush()
        # The console gets the child's own error line, not only the log's name.
        error = error_lines(Path(snakemake.log[0]).read_text(errors="replace"))
        print("\n".join([*error, f"training failed with exit status {completed.returncode}; "
                                   f"full log: {snakemake.log[0]}"]), file=sys.__stderr__)
        sys.exit(completed.returncode)


run_step(snakemake, train)
