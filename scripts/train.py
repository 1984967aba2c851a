"""One training run: `python -m phi3v.training.train` under the launcher (torchrun for several processes)."""

import json
import os
import shutil
import sys
from pathlib import Path

# This process and the launcher it starts load no model: no Auto-class registration (torch +
# transformers, ~4 s each); the launcher gives the training process the usual import.
os.environ["PHI3V_AUTO_CLASSES"] = "0"
sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402
from phi3v.layout import ADAPTER  # noqa: E402


def remove_adapter():
    """A LoRA run's adapter/ is not a declared output (full runs have none), so Snakemake neither
    deletes it before the job nor after a failure: without this a stale one would sit beside a new
    (or a deleted) model/."""
    shutil.rmtree(Path(snakemake.params.out_dir) / ADAPTER, ignore_errors=True)


def announce_resume():
    """Say on the console, not only in the log, whether the run resumes or sets old checkpoints aside."""
    from phi3v.data.records import split_path
    from phi3v.training.checkpoint import latest_checkpoint, ResumePlan
    from phi3v.training.fingerprint import run_fingerprint
    from phi3v.training.run_config import RunConfig

    train_jsonl = split_path(snakemake.input.data, snakemake.wildcards.dataset, "train")
    if not train_jsonl.is_file():
        return  # training itself says what is missing
    if latest_checkpoint(snakemake.params.checkpoint_dir) is None:
        return  # nothing to resume or set aside; the fingerprint would cost a torch import (~1 s)
    run = RunConfig.from_dict(json.loads(snakemake.params.run_json))
    launch = snakemake.params.launch
    fingerprint = run_fingerprint(run, base_model=snakemake.input.base_model, train_jsonl=train_jsonl,
                                  processes=launch["nodes"] * launch["processes_per_node"])
    message = ResumePlan.of(snakemake.params.checkpoint_dir, fingerprint).message(run.run)
    if message:  # the training process acts on the same plan and logs the same line
        print(message, file=sys.__stderr__, flush=True)


def train():
    from phi3v.launch import launcher_command, run_launched

    announce_resume()
    command = launcher_command([
        "phi3v.training.train",
        "--run-json", snakemake.params.run_json,
        "--base-model", snakemake.input.base_model,
        "--data-dir", snakemake.input.data,
        "--dataset", snakemake.wildcards.dataset,
        "--out-dir", snakemake.params.out_dir,
        "--checkpoint-dir", snakemake.params.checkpoint_dir,
    ], **snakemake.params.launch)
    remove_adapter()
    status = run_launched(command, log=snakemake.log[0])  # the child writes to this job's log
    if status:
        remove_adapter()
        sys.exit(status)


run_step(snakemake, train)
