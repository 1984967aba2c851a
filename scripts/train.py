"""One training run: `python -m phi3v.training.train` under the launcher (torchrun for several processes)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def train():
    from phi3v.launch import launcher_command, run_launched

    command = launcher_command([
        "phi3v.training.train",
        "--run-json", snakemake.params.run_json,
        "--base-model", snakemake.input.base_model,
        "--data-dir", snakemake.input.data,
        "--dataset", snakemake.wildcards.dataset,
        "--out-dir", snakemake.params.out_dir,
        "--checkpoint-dir", snakemake.params.checkpoint_dir,
    ], **snakemake.params.launch)
    run_launched(command, log=snakemake.log[0])  # the child writes to this job's log


run_step(snakemake, train)
