"""benchmarks/gpu_speed.py: its install on a fresh environment, and --tiny, the GPU benchmark's code
path on a CPU, two of its rows."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_speed.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_writes_a_row_per_setting_and_the_table(tmp_path, capsys):
    gpu_speed = load_script()
    assert gpu_speed.main(["--tiny", "--out", str(tmp_path), "--rows", "frozen_vision-recipe",
                           "frozen_vision-best"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "gpu_speed.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == ["frozen_vision-recipe", "frozen_vision-best"]
    recipe, best = rows
    for row in rows:
        assert row["img_per_s"] > 0 and row["tokens_per_s"] > 0 and row["peak_mem_gib"] > 0
        assert row["versions"]["torch"] and row["card"].startswith("cpu")
        assert row["mfu"] is None and row["mfu_reason"]  # no peak FLOP/s for a CPU
    assert recipe["settings"]["per_device_batch_size"] == 1 and recipe["settings"]["gradient_checkpointing"]
    # the memory plan's figure beside the measured peak, for the rows at the recipe's settings it models
    assert recipe["planned_peak_gib"] > 0 and "planned_peak_gib" not in best
    assert recipe["settings"]["checkpointed_layers"] is None and not recipe["settings"]["packing"]
    # the memory fit chose the whole effective batch a step (2) and, with room to spare, no recomputation
    assert best["memory_fit"]["per_device_batch_size"] == 2 and best["settings"]["checkpointed_layers"] == 0
    # SDPA here: packing would attend through a dense block-diagonal mask, so the best row pads
    assert not best["settings"]["packing"] and best["settings"]["frozen_vision_no_grad"]
    assert not best["settings"]["fused_kernels"] and "liger" in best["not_used"]["fused_kernels"]
    table = (tmp_path / "gpu_speed.md").read_text()
    assert table in capsys.readouterr().out
    assert "## The recipe's settings" in table and "## This project's best settings" in table
    assert "`frozen_vision-best`" in table and "batch 2/GPU, 0 layers checkpointed" in table
    assert "packed" not in table
    assert f"frozen_vision-recipe {recipe['planned_peak_gib']:.2f} planned, {recipe['peak_mem_gib']:.2f} measured" in table


@pytest.mark.slow
def test_the_benchmark_installs_the_package_and_a_fresh_interpreter_imports_it(tmp_path):
    """A fresh environment whose only packages are this one's dependencies (this environment's
    site-packages as a plain path: its own editable phi3v is not loaded): the install step, then
    the re-started script imports phi3v from this checkout. The index stays closed (PIP_NO_INDEX)."""
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    base_site = next(Path(entry) for entry in sys.path
                     if entry.endswith("site-packages") and (Path(entry) / "torch").is_dir())
    fresh_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
    Path(fresh_site, "dependencies.pth").write_text(f"{base_site}\n")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PIP_INDEX_URL")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    fresh = subprocess.run([python, "-c", "import phi3v"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "No module named 'phi3v'" in fresh.stderr  # nothing installed yet
    done = subprocess.run([python, SCRIPT, "--install-only", "--no-kernels"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"phi3v imports from {REPO / 'phi3v'}; not installed: flash-attn: not installed (--no-kernels)" \
        in done.stdout

    # flash-attn as its setup behaves without a matching prebuilt wheel: it says so, then compiles for hours
    sdist = tmp_path / "index" / "flash_attn-2.9.9"
    sdist.mkdir(parents=True)
    (sdist / "setup.py").write_text(
        "import time\nprint('Guessing wheel URL:  https://example.org/flash_attn-2.9.9+cu12.whl')\n"
        "print('Precompiled wheel not found. Building from source...')\ntime.sleep(600)\n")
    with tarfile.open(tmp_path / "index" / "flash_attn-2.9.9.tar.gz", "w:gz") as archive:
        archive.add(sdist, arcname=sdist.name)
    env["PIP_FIND_LINKS"] = str(tmp_path / "index")
    code = (f"import importlib.util as u; s = u.spec_from_file_location('g', {str(SCRIPT)!r}); "
            "g = u.module_from_spec(s); s.loader.exec_module(g); print(g.install_kernels({'flash-attn': 300}))")
    started = time.monotonic()
    kernels = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert kernels.returncode == 0, kernels.stderr
    assert time.monotonic() - started < 120  # stopped at the build, not at the time limit
    assert ("{'flash-attn': 'no prebuilt wheel for this torch/CUDA/Python (https://example.org/flash_attn-2.9.9+cu12.whl); "
            "its source build takes hours, so it was stopped'}") in kernels.stdout


def test_rows_that_cannot_finish_within_the_time_limit_are_left_out_and_listed(tmp_path, capsys):
    gpu_speed = load_script()
    assert gpu_speed.main(["--tiny", "--out", str(tmp_path), "--rows", "lora-recipe", "lora-best",
                           "--time-limit-s", "1"]) == 0  # not a failure: the table says what is missing
    rows = [json.loads(line) for line in (tmp_path / "gpu_speed.jsonl").read_text().splitlines()]
    assert [(r["row"], r["not_measured"].split(":")[0]) for r in rows] == [("lora-recipe", "not started"),
                                                                           ("lora-best", "not started")]
    table = (tmp_path / "gpu_speed.md").read_text()
    assert "Not measured within the time limit: lora-recipe (not started: " in table
    assert "of the 1 s time limit left); lora-best" in table
