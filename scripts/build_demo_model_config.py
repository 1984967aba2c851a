"""The demo model without weights: tiny config, tokenizer learned from the demo texts, processor files."""

import os
import sys

os.environ["PHI3V_AUTO_CLASSES"] = "0"  # no model is loaded: the config and processor classes are used directly
sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def build_demo_model_config():
    from phi3v.training.demo_model import write_demo_model_config

    write_demo_model_config(
        snakemake.input.corpus,
        list(snakemake.input.datasets),
        snakemake.output[0],
        vocab_size=snakemake.params.vocab_size,
    )


run_step(snakemake, build_demo_model_config)
