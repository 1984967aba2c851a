"""The hub's model folder (weights, config, tokenizer, processor config) at a pinned commit."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402

# Everything a model folder needs; the hub's remote-code .py files are not (the model is native).
CONFIG_FILES = ["*.json", "tokenizer*", "*.model", "*.jinja", "*.txt"]
WEIGHT_FILES = ["*.safetensors"]


def download_model():
    import json
    from pathlib import Path

    from phi3v.data.sources.hub import download_snapshot
    from phi3v.provenance import MODEL_SOURCE_FILE

    repo_id, out_dir = snakemake.params.repo_id, Path(snakemake.output[0])
    record = download_snapshot(
        repo_id, out_dir, allow_patterns=CONFIG_FILES + (WEIGHT_FILES if snakemake.params.weights else []),
        revision=snakemake.params.revision,
        cache_dir=snakemake.params.cache_dir, repo_type="model",
    )
    # Runs started from this folder record which model and commit they came from.
    (out_dir / MODEL_SOURCE_FILE).write_text(json.dumps({"model": {"id": repo_id, "revision": record["commit"]}}, indent=2))
    print(f"downloaded {repo_id}@{record['commit']} to {out_dir}")


run_step(snakemake, download_model)
