"""The hub's model folder (weights, config, tokenizer, processor config) at a pinned commit."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def download_model():
    from phi3v.data.sources.hub import download_model

    repo_id = snakemake.params.repo_id
    record = download_model(repo_id, snakemake.output[0], revision=snakemake.params.revision,
                            cache_dir=snakemake.params.cache_dir, weights=snakemake.params.weights)
    print(f"downloaded {repo_id}@{record['commit']} to {snakemake.output[0]}")


run_step(snakemake, download_model)
