"""Several seeds of a run through Snakemake: one training and evaluation per seed, one table row."""

import json

import pytest

from .helpers import DEMO_SLICE_CONFIG, job_counts, run_snakemake

SEEDS_CONFIG = ["runs_filter=[docvqa/lora-bf16-sdpa*]", "train={seeds: [0, 1]}", *DEMO_SLICE_CONFIG]


def test_dry_run_trains_and_evaluates_each_seed(tmp_path):
    result = run_snakemake("-n", "--cores", "1", "--config", f"results_dir={tmp_path / 'results'}", *SEEDS_CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert (counts["train"], counts["evaluate"], counts["tables"]) == (2, 3, 1)  # two seeds and the base model
    for seed in (0, 1):
        assert f"runs/docvqa/lora-bf16-sdpa-seed{seed}/metrics.json" in result.stdout


@pytest.mark.slow
def test_seeds_path_on_a_tiny_slice(tmp_path):
    results = tmp_path / "results"
    result = run_snakemake("--cores", "2", "--config", f"results_dir={results}", *SEEDS_CONFIG, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    scores = [json.loads((results / "eval" / "docvqa" / f"lora-bf16-sdpa-seed{seed}" / "scores.json").read_text())
              for seed in (0, 1)]
    assert all(s["per_example"]["id"] == scores[0]["per_example"]["id"] and s["n"] == 4 for s in scores)
    for seed in (0, 1):
        provenance = json.loads((results / "runs" / "docvqa" / f"lora-bf16-sdpa-seed{seed}" / "metrics.json").read_text())
        assert provenance["steps"] == 3
    table = (results / "tables" / "docvqa.md").read_text()
    row = next(line for line in table.splitlines() if "`lora-bf16-sdpa` (seeds 0, 1)" in line)
    assert " ± " in row and " [" in row
