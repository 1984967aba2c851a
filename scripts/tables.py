"""The recipe's tables, regenerated as markdown from this workflow's results."""

import os
import sys

os.environ["PHI3V_AUTO_CLASSES"] = "0"  # loads no model: no torch + transformers import (~4 s)
sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def tables():
    from phi3v.layout import ReportInputs
    from phi3v.reporting.tables import write_tables

    inputs = ReportInputs(dict(snakemake.input.items()))
    written = write_tables(dict(snakemake.params.config), inputs, snakemake.output.tables, snakemake.output.readme)
    print("wrote " + ", ".join(map(str, written)))


run_step(snakemake, tables)
