"""The demo's base model: a short pre-training of the weightless demo model, official folder layout."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def build_demo_model():
    from phi3v.training.demo_model import pretrain_demo_base

    pretrain_demo_base(
        snakemake.input.model_config,
        snakemake.input.corpus,
        snakemake.output[0],
        steps=snakemake.params.steps,
        seed=snakemake.params.seed,
    )


run_step(snakemake, build_demo_model)
