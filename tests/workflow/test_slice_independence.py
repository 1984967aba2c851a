"""A runs_filter slice plans the same demo base model as the full demo: same build inputs (every
defined dataset's texts feed the tokenizer), same parameters."""

import re

from .helpers import run_snakemake as snakemake


def base_model_job(tmp_path, *config):
    """The build_demo_model_config job of a dry run (the tokenizer's texts), as Snakemake prints it (input:,
    output:, ...)."""
    result = snakemake("-n", "--cores", "1", "--config", f"results_dir={tmp_path}", *config)
    assert result.returncode == 0, result.stderr
    job = re.search(r"^rule build_demo_model_config:\n((?:    .*\n)+)", result.stdout, re.MULTILINE)
    assert job, result.stdout
    return {key: value for key, value in re.findall(r"^    (\w+): (.*)$", job.group(1), re.MULTILINE)
            if key in ("input", "output")}


def test_one_run_slice_builds_the_full_demos_base_model(tmp_path):
    full = base_model_job(tmp_path)
    one_run = base_model_job(tmp_path, "runs_filter=[docvqa/full-bf16-sdpa]")
    assert one_run == full
    assert all(f"{tmp_path}/data/{name}" in full["input"] for name in ("docvqa", "hateful_memes", "nlvr2", "ucf101"))
