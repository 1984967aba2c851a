"""benchmarks/gpu_speed.py --tiny: the GPU benchmark's code path on a CPU, two of its rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_speed.py"


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
    assert recipe["settings"]["checkpointed_layers"] is None and not recipe["settings"]["packing"]
    # the memory fit chose the whole effective batch a step (2) and, with room to spare, no recomputation
    assert best["memory_fit"]["per_device_batch_size"] == 2 and best["settings"]["checkpointed_layers"] == 0
    assert best["settings"]["packing"] and best["settings"]["frozen_vision_no_grad"]
    assert not best["settings"]["fused_kernels"] and "liger" in best["not_used"]["fused_kernels"]
    table = (tmp_path / "gpu_speed.md").read_text()
    assert table in capsys.readouterr().out
    assert "## The recipe's settings" in table and "## This project's best settings" in table
    assert "`frozen_vision-best`" in table and "batch 2/GPU, 0 layers checkpointed, packed" in table
