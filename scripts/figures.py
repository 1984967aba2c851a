"""Figures for `snakemake --report`: scores against the recipe, throughput, training curves."""

import os
import sys

os.environ["PHI3V_AUTO_CLASSES"] = "0"  # loads no model: no torch + transformers import (~4 s)
sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def figures():
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    from phi3v.layout import ReportInputs
    from phi3v.reporting.figures import write_figures

    inputs = ReportInputs(dict(snakemake.input.items()))
    written = write_figures(dict(snakemake.params.config), inputs, snakemake.output[0])
    print("wrote " + ", ".join(map(str, written)))


run_step(snakemake, figures)
