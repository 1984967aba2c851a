"""One row of the speed table: img/s, tokens/s, peak memory and MFU on the benchmark shape,
measured by `python -m phi3v.training.speed` under the launcher, as training runs."""

import os
import sys

os.environ["PHI3V_AUTO_CLASSES"] = "0"  # a launching process, as in scripts/train.py
sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def benchmark_speed():
    from phi3v.launch import launcher_command, run_launched

    command = launcher_command([
        "phi3v.training.speed",
        "--row", snakemake.wildcards.row,
        "--run-json", snakemake.params.run_json,
        "--base-model", snakemake.input.base_model,
        "--data-dir", snakemake.input.data,
        "--weights", snakemake.params.weights,
        "--warmup", str(snakemake.params.warmup),
        "--out", snakemake.output[0],
    ], **snakemake.params.launch)
    sys.exit(run_launched(command, log=snakemake.log[0]))  # the child writes to this job's log


run_step(snakemake, benchmark_speed)
