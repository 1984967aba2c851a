"""The demo's base model: tiny config and tokenizer, short pre-training, official folder layout."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def build_demo_model():
    from phi3v.training.demo_model import build_demo_base

    build_demo_base(
        snakemake.input.corpus,
        list(snakemake.input.datasets),
        snakemake.output[0],
        steps=snakemake.params.steps,
        seed=snakemake.params.seed,
        vocab_size=snakemake.params.vocab_size,
    )


run_step(snakemake, build_demo_model)
