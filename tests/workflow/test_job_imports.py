"""Jobs that load no model do not import torch and transformers (~4 s of CPU a job on the demo's machine)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What each job's Snakemake-side process imports before (or instead of) starting a model process.
MODULES = {
    # scripts/train.py: the resume announcement, before `python -m phi3v.training.train` starts
    "train": ["phi3v.data.records", "phi3v.training.checkpoint", "phi3v.training.fingerprint",
              "phi3v.training.run_config", "phi3v.launch"],
    "synthesize_raw": ["phi3v.data.sources.docvqa", "phi3v.data.sources.cauldron", "phi3v.data.sources.ucf101"],
    "pretrain_corpus": ["phi3v.data.sources.pretrain_corpus"],
    # scripts/convert.py: a source's converter, then the split statistics (image tokens counted without torch)
    "convert": ["phi3v.data.sources.docvqa", "phi3v.data.sources.cauldron", "phi3v.data.sources.ucf101",
                "phi3v.data.stats"],
    "tables": ["phi3v.layout", "phi3v.reporting.tables"],
    "figures": ["phi3v.layout", "phi3v.reporting.figures"],
}


@pytest.mark.parametrize("job", sorted(MODULES))
def test_a_job_that_loads_no_model_imports_no_torch(job):
    code = "import sys\n" + "".join(f"import {module}\n" for module in MODULES[job]) + (
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    env = {**os.environ, "PHI3V_AUTO_CLASSES": "0", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{job}: {result.stdout}"


@pytest.mark.parametrize("script", ["raw_dataset", "convert", "pretrain_corpus", "tables", "figures", "train", "benchmark_speed",
                                    "build_demo_model_config"])
def test_scripts_of_jobs_without_a_model_skip_the_auto_class_registration(script):
    """`import phi3v` registers the Auto classes (torch + transformers) unless told not to, before
    scripts/common.py imports it."""
    text = (REPO / "scripts" / f"{script}.py").read_text()
    assert text.index('os.environ["PHI3V_AUTO_CLASSES"] = "0"') < text.index("from common import")
