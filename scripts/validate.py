"""A custom dataset: check every record and image, then link it into results/data/<name>/."""

import os
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def link_dataset(source: Path, target: Path, name: str) -> None:
    """Symlink the split files and images/ (no copy of a possibly large image folder)."""
    target.mkdir(parents=True)
    for entry in [*source.glob(f"{name}_*.jsonl"), source / "images"]:
        os.symlink(entry.resolve(), target / entry.name)


def validate():
    from phi3v.data.validation import validate_or_raise
    from phi3v.data.stats import write_stats

    name, source, target = snakemake.wildcards.dataset, Path(snakemake.input[0]), Path(snakemake.output[0])
    counts = validate_or_raise(source, name, eval_split=snakemake.params.eval_split)
    print(f"{source}: valid; records per split: {counts}")
    link_dataset(source, target, name)
    write_stats(target, name, snakemake.params.num_crops)


run_step(snakemake, validate)
