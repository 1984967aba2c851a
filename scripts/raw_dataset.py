"""Raw folder of one task in the hub's layout: synthesized (demo) or downloaded (paper)."""

import os
import sys

os.environ["PHI3V_AUTO_CLASSES"] = "0"  # loads no model: no torch + transformers import (~4 s)
sys.path.insert(0, snakemake.scriptdir)
from common import run_step, source_function  # noqa: E402


def raw_dataset():
    task, raw_dir = snakemake.params.task, snakemake.output[0]
    if snakemake.rule == "synthesize_raw":
        source_function("synthesize", task)(raw_dir, snakemake.params.seed, dict(snakemake.params.sizes))
    else:
        source_function("download", task)(raw_dir, revision=snakemake.params.revision, cache_dir=snakemake.params.cache_dir)


run_step(snakemake, raw_dataset)
