"""The paper preset rehearsed on a CPU from the local hub cache (`test_hub`), through Snakemake.

`paper_rehearsal.yaml` shrinks only sizes (steps, samples, converted eval sets, evaluation lengths,
speed steps), sets this machine as the hardware and maps the flash-attention rows to SDPA
(`attention_fallback`). With it, the dry run below must list every job of the paper DAG; the whole
DAG takes about 17 minutes on 2 cores (README), so CI runs a slice of it (about 6 minutes on 2 busy cores, 30 jobs) that still runs
every rule of the paper DAG, every downloader (5 datasets, the model and its config), every strategy
(full, frozen vision, LoRA, QLoRA) and both precisions, and a speed row, with one more shrink:
num_crops 1 instead of 16 (4 for UCF-101). DeepSpeed is off (its CPU accelerator has no fp16).
"""

import json
import re
from pathlib import Path

import pytest

from .helpers import job_counts, run_snakemake

OVERRIDES = Path(__file__).with_name("paper_rehearsal.yaml")

# The paper DAG with the overrides: every job but the 2- and 4-node speed rows (one node here).
# lmms-eval's protocol is on: DocVQA validation (lmms-lab-encoder/DocVQA) answered by the base model and each DocVQA row.
PAPER_JOBS = {"download_raw": 5, "synthesize_raw": 1, "download_model": 1, "download_model_config": 1,
              "convert": 6, "train": 19, "evaluate": 23, "evaluate_lmms_eval": 9, "benchmark_speed": 11, "tables": 1,
              "figures": 1, "all": 1, "total": 79}

SLICE_RUNS = ["nlvr2/frozen_vision-bf16-sdpa",      # flash rows of the preset, SDPA here
              "docvqa/full-bf16-sdpa",
              "docvqa/qlora-fp16-eager",
              "hateful_memes/lora-bf16-sdpa",
              "ucf101/full-fp16-eager"]
SLICE_ROW = "lora-sdpa-bf16-1x8"                    # a flash speed row of the preset, SDPA here
SLICE = [
    f"runs_filter=[{', '.join(SLICE_RUNS)}, speed/{SLICE_ROW}]",
    "run_overrides={num_crops: 1}",
    "datasets={nlvr2: {num_crops: 1}, docvqa: {num_crops: 1}, hateful_memes: {num_crops: 1}, "
    "ucf101: {num_crops: 1}, docvqa_pages: {num_crops: 1}}",
    "speed={num_crops: 1}",
]


def rehearsal_args(results: Path, *config: str) -> list[str]:
    return ["--configfile", str(OVERRIDES), "--config", f"results_dir={results}", *config]


def test_the_rehearsal_lists_every_job_of_the_paper_dag(offline_hub, tmp_path):
    result = run_snakemake("-n", *rehearsal_args(tmp_path / "results"), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert job_counts(result.stdout) == PAPER_JOBS
    skipped = re.findall(r"skipped speed row (\S+): (.*) \(on_unsupported", result.stderr)
    assert sorted(skipped) == [("full-eager-fp16-2x16", "needs 2 nodes"), ("full-eager-fp16-4x32", "needs 4 nodes"),
                               ("full-sdpa-bf16-2x16", "needs 2 nodes"), ("full-sdpa-bf16-4x32", "needs 4 nodes")]


@pytest.mark.slow
def test_a_slice_of_the_paper_rehearsal_runs_end_to_end_from_the_hub_cache(offline_hub, tmp_path):
    results = tmp_path / "results"
    args = rehearsal_args(results, *SLICE)
    planned = run_snakemake("-n", *args, timeout=300)
    assert planned.returncode == 0, planned.stderr[-4000:]
    counts = job_counts(planned.stdout)
    assert set(counts) == set(PAPER_JOBS)  # every rule of the paper DAG
    assert counts["download_raw"] == 5 and counts["train"] == len(SLICE_RUNS)

    result = run_snakemake("--cores", "2", *args, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    for name in SLICE_RUNS:
        dataset, run = name.split("/")
        metrics = json.loads((results / "runs" / dataset / run / "metrics.json").read_text())
        assert metrics["steps"] == 1
        assert (results / "runs" / dataset / run / "model" / "config.json").is_file()
        scores = json.loads((results / "eval" / dataset / run / "scores.json").read_text())
        assert scores["run"] == run and scores["n"] >= 1
    for dataset in ("nlvr2", "docvqa", "hateful_memes", "ucf101"):
        assert (results / "eval" / dataset / "base" / "scores.json").is_file()
    for run in ("base", "full-bf16-sdpa", "qlora-fp16-eager"):  # lmms-eval's protocol on DocVQA validation
        lmms = json.loads((results / "eval" / "docvqa" / run / "lmms_eval" / "scores.json").read_text())
        assert (lmms["dataset"], lmms["split"], lmms["protocol"], lmms["n"]) == ("docvqa_val", "val", "lmms_eval", 2)
    speed = json.loads((results / "speed" / f"{SLICE_ROW}.json").read_text())
    assert speed["attention"] == "sdpa"

    tables = (results / "README.md").read_text()  # every table, gathered
    for name in SLICE_RUNS:
        assert f"`{name.split('/')[1]}`" in tables, name
    assert f"`{SLICE_ROW}`; sdpa instead of the preset's flash_attention_2" in tables
    assert "sdpa instead of the preset's flash_attention_2 (attention_fallback: no GPU)" in tables
    assert "on `docvqa_val`: DocVQA's validation split, `lmms-lab-encoder/DocVQA`" in tables

    report = run_snakemake("--report", str(tmp_path / "report.html"), *args, timeout=300)
    assert report.returncode == 0, report.stderr[-4000:]
    assert (tmp_path / "report.html").stat().st_size > 0
