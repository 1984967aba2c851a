"""One training run: `python -m phi3v.training.train` under the launcher (torchrun for several processes)."""

import os
import subprocess
import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


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


def train():
    command = train_command()
    print("$ " + subprocess.list2cmdline(command), flush=True)
    # The child writes to the same log file as this script.
    completed = subprocess.run(command, stdout=sys.stdout, stderr=subprocess.STDOUT, env=dict(os.environ))
    if completed.returncode:
        print(f"training failed with exit status {completed.returncode}; see {snakemake.log[0]}", file=sys.__stderr__)
        sys.exit(completed.returncode)


run_step(snakemake, train)
