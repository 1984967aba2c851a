"""Running Snakemake from the tests."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def run_snakemake(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """Snakemake in the repository, offline (no Hugging Face Hub call may happen)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a dry run as {rule: count}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    counts = {}
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


# The demo slice: DocVQA with tiny sizes, full fine-tuning and LoRA (tests/workflow/test_demo_slice.py;
# tests/cluster runs its full-parameter run through SLURM and compares it with this local run).
DEMO_SLICE_RUNS = ["full-bf16-sdpa", "lora-bf16-sdpa"]
DEMO_SLICE_CONFIG = [
    "datasets={docvqa: {sizes: {train: 16, test: 8}}}",
    "pretrain={corpus_size: 16, steps: 4}",
    "run_overrides={max_steps: 3, epochs: 1}",
    "evaluation={batch_size: 4, max_samples: 4, max_new_tokens: 4}",
]


def demo_slice_config(results: Path, runs=DEMO_SLICE_RUNS) -> list[str]:
    """`--config` values of the demo slice of `runs` into `results`."""
    return [f"results_dir={results}", f"runs_filter=[{', '.join(f'docvqa/{run}' for run in runs)}]",
            *DEMO_SLICE_CONFIG]
