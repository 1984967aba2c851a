"""The hub's model folder (weights, config, tokenizer, processor config) at a pinned revision."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def download_model():
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from phi3v.errors import UserError

    repo_id, revision = snakemake.params.repo_id, snakemake.params.revision
    try:
        path = snapshot_download(
            repo_id, revision=revision, cache_dir=snakemake.params.cache_dir, local_dir=snakemake.output[0]
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise UserError(
            f"config key `model.id`: cannot download {repo_id!r} (revision {revision}): {error}. "
            "Check the id and revision, the network, and HF_TOKEN for gated models"
        ) from None
    print(f"downloaded {repo_id}@{revision or 'main'} to {path}")


run_step(snakemake, download_model)
