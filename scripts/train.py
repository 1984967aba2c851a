"""One training run: `python -m phi3v.training.train` under the launcher (torchrun for several processes)."""

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


def train():
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
