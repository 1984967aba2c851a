"""Raw folder -> the recipe's jsonl format + images, then per-split statistics."""

import os
import sys

os.environ["PHI3V_AUTO_CLASSES"] = "0"  # loads no model: no torch + transformers import (~4 s)
sys.path.insert(0, snakemake.scriptdir)
from common import run_step, source_function  # noqa: E402


def convert():
    from phi3v.data.stats import write_stats

    out_dir = snakemake.output[0]
    # Files are named after the dataset's key, so two datasets of one task can live side by side.
    source_function("convert", snakemake.params.task)(
        snakemake.input[0], out_dir, name=snakemake.wildcards.dataset, **dict(snakemake.params.options)
    )
    write_stats(out_dir, snakemake.wildcards.dataset, snakemake.params.num_crops)


run_step(snakemake, convert)
