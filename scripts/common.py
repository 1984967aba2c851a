"""What every workflow script shares: the log file, the thread count, and clean user errors."""

import contextlib
import logging
import os
import sys
from pathlib import Path

# The package from this checkout, also inside a conda environment that does not install it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phi3v.errors import UserError  # noqa: E402
from phi3v.launch import visible_gpus  # noqa: E402

LAUNCHED_RULES = ("train", "benchmark_speed")  # their jobs start through `python -m phi3v.launch`


def run_step(snakemake, step):
    """Run `step()` with stdout, stderr and logging going to the job's log file.

    A UserError ends the job with its message alone (in the log and on the console) and status 2.
    """
    # Before torch is imported: one job's threads must not take the cores of the jobs beside it.
    os.environ["OMP_NUM_THREADS"] = str(snakemake.threads)
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        logging.basicConfig(
            stream=log, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True
        )
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(snakemake.threads)
        try:
            # Jobs on a shared multi-GPU machine hold disjoint GPUs; training and speed rows claim
            # their own in `phi3v.launch`, which also starts their processes.
            gpus = 0 if snakemake.rule in LAUNCHED_RULES else snakemake.resources.get("gpu", 0)
            with visible_gpus(gpus, env=os.environ):
                return step()
        except UserError as error:
            print(f"error: {error}", file=log)
            print(f"error: {error}", file=sys.__stderr__)
            sys.exit(2)


def source_function(kind: str, task: str):
    """`<kind>_<task>` of the task's module in phi3v.data.sources (kind: synthesize, download, convert)."""
    from phi3v.data.sources import source_function as lookup

    return lookup(kind, task)
