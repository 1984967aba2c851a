"""A slice of the demo through Snakemake itself: one dataset, two strategies, tiny sizes."""

import json

import pytest

from .helpers import DEMO_SLICE_RUNS, run_snakemake


@pytest.mark.slow
def test_demo_slice_runs_end_to_end(local_demo_slice, tmp_path):
    result, results, config = local_demo_slice.run, local_demo_slice.results, local_demo_slice.config
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    for run in ["base", *DEMO_SLICE_RUNS]:
        scores = json.loads((results / "eval" / "docvqa" / run / "scores.json").read_text())
        assert scores["dataset"] == "docvqa" and scores["run"] == run and scores["metric"] == "anls"
        assert 0 <= scores["score"] <= 100 and scores["n"] == 4
    for run in DEMO_SLICE_RUNS:
        metrics = json.loads((results / "runs" / "docvqa" / run / "metrics.json").read_text())
        assert metrics["steps"] == 3
        assert (results / "runs" / "docvqa" / run / "model" / "config.json").is_file()
        assert (results / "benchmarks" / "train" / "docvqa" / f"{run}.tsv").is_file()
    assert list((results / "tables").glob("*.md"))

    # Nothing left to do, and the report renders the tables and figures.
    again = run_snakemake("-n", "--cores", "1", "--config", *config)
    assert "Nothing to be done" in again.stdout + again.stderr
    report = run_snakemake("--report", str(tmp_path / "report.html"), "--config", *config)
    assert report.returncode == 0, report.stderr[-4000:]
    assert (tmp_path / "report.html").stat().st_size > 0
