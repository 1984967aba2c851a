"""The demo's pre-training corpus (synthetic captions of shapes, pairs and motion strips)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def pretrain_corpus():
    from phi3v.data.sources.pretrain_corpus import write_pretrain_corpus

    counts = write_pretrain_corpus(snakemake.output[0], seed=snakemake.params.seed, n=snakemake.params.size)
    print(f"records per split: {counts}")


run_step(snakemake, pretrain_corpus)
