"""The recipe's tables, regenerated as markdown from this workflow's results."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def tables():
    from phi3v.reporting.tables import write_tables

    written = write_tables(dict(snakemake.params.config), snakemake.params.results_dir, snakemake.output[0])
    print("wrote " + ", ".join(map(str, written)))


run_step(snakemake, tables)
