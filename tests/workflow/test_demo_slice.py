"""A slice of the demo through Snakemake itself: one dataset, two strategies, tiny sizes."""

import json

import pytest

from .helpers import run_snakemake

RUNS = ["full-bf16-sdpa", "lora-bf16-sdpa"]


@pytest.mark.slow
def test_demo_slice_runs_end_to_end(tmp_path):
    results = tmp_path / "results"
    config = [
        f"results_dir={results}",
        "runs_filter=[docvqa/full-bf16-sdpa, docvqa/lora-bf16-sdpa]",
        "datasets={docvqa: {sizes: {train: 16, test: 8}}}",
        "pretrain={corpus_size: 16, steps: 4}",
        "run_overrides={max_steps: 3, epochs: 1}",
        "evaluation={batch_size: 4, max_samples: 4, max_new_tokens: 4}",
    ]
    result = run_snakemake("--cores", "2", "--config", *config, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    for run in ["base", *RUNS]:
        scores = json.loads((results / "eval" / "docvqa" / run / "scores.json").read_text())
        assert scores["dataset"] == "docvqa" and scores["run"] == run and scores["metric"] == "anls"
        assert 0 <= scores["score"] <= 100 and scores["n"] == 4
    for run in RUNS:
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
