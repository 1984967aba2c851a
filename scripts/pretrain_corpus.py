"""The demo's pre-training corpus (synthetic captions of shapes, pairs and motion strips)."""

import os
import sys

os.environ["PHI3V_AUTO_CLASSES"] = "0"  # loads no model: no torch + transformers import (~4 s)
sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def pretrain_corpus():
    from phi3v.data.sources.pretrain_corpus import write_pretrain_corpus

    counts = write_pretrain_corpus(snakemake.output[0], seed=snakemake.params.seed, n=snakemake.params.size)
    print(f"records per split: {counts}")


run_step(snakemake, pretrain_corpus)
