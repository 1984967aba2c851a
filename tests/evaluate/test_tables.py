"""Regenerated tables: golden files, byte-identical regeneration, errors naming run and file."""

import json
import os
import shutil

import pytest
from .conftest import GOLDEN, demo_config

from phi3v.reporting import recipe_tables
from phi3v.errors import UserError
from phi3v.reporting.tables import format_learning_rate, table_file_names, write_tables

# Set to regenerate the golden files after an intended change; review the diff before committing.
UPDATE = os.environ.get("PHI3V_UPDATE_GOLDEN") == "1"


def generated(results_dir, out_dir, config=None):
    paths = write_tables(config or demo_config(), results_dir, out_dir)
    return {path.name: path.read_bytes() for path in paths}


def test_tables_equal_golden_files(results_dir, tmp_path):
    files = generated(results_dir, tmp_path / "tables")
    assert sorted(files) == sorted([*table_file_names(demo_config()), "README.md"])
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        for name, data in files.items():
            (GOLDEN / name).write_bytes(data)
    for name, data in files.items():
        assert data.decode() == (GOLDEN / name).read_text(encoding="utf-8"), name


def test_second_generation_is_byte_identical(results_dir, tmp_path):
    first = generated(results_dir, tmp_path / "a")
    second = generated(results_dir, tmp_path / "b")
    assert first == second
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp-" in p.name]


def test_table_keeps_recipe_columns_first(results_dir, tmp_path):
    text = generated(results_dir, tmp_path)["docvqa.md"].decode()
    assert recipe_tables.DOCVQA.header + " | Recipe | Δ |" in text
    assert "| 61.23 | 83.65 | -22.42 |" in text  # measured 61.2345 in the recipe's 2 decimals
    hateful = generated(results_dir, tmp_path)["hateful_memes.md"].decode()
    assert "| 70.0 | 86.4 | -16.4 |" in hateful  # this table prints one decimal
    assert "not run: QLoRA needs CUDA (bitsandbytes)" in hateful
    nlvr2 = generated(results_dir, tmp_path)["nlvr2.md"].decode()
    assert nlvr2.count("not in this preset |") == 2


def test_speedup_is_against_the_first_row(results_dir, tmp_path):
    text = generated(results_dir, tmp_path)["speed.md"].decode()
    assert "| 3.000 | 1.50x |" in text  # 3.0 img/s against the 2.0 img/s baseline row
    assert "| 5.041 | 1x | ~42 |" in text


def test_missing_scores_name_the_run_and_file(results_dir, tmp_path):
    path = results_dir / "eval" / "docvqa" / "full-bf16-sdpa" / "scores.json"
    path.unlink()
    with pytest.raises(UserError, match=r"docvqa/full-bf16-sdpa.*scores\.json.*missing"):
        write_tables(demo_config(), results_dir, tmp_path / "tables")
    assert not (tmp_path / "tables" / "docvqa.md").exists()


def test_corrupt_metrics_name_the_run_and_file(results_dir, tmp_path):
    path = results_dir / "runs" / "hateful_memes" / "full-bf16-sdpa" / "metrics.json"
    path.write_text('{"final_loss": 0.4,')
    with pytest.raises(UserError, match=r"hateful_memes/full-bf16-sdpa.*metrics\.json.*not valid JSON"):
        write_tables(demo_config(), results_dir, tmp_path / "tables")


def test_scores_without_score_field_are_rejected(results_dir, tmp_path):
    path = results_dir / "eval" / "ucf101" / "lora-bf16-sdpa" / "scores.json"
    path.write_text(json.dumps({"n": 3}))
    with pytest.raises(UserError, match=r"ucf101/lora-bf16-sdpa.*lacks score"):
        write_tables(demo_config(), results_dir, tmp_path / "tables")


def test_missing_base_scores_name_the_base_run(results_dir, tmp_path):
    shutil.rmtree(results_dir / "eval" / "hateful_memes" / "base")
    with pytest.raises(UserError, match=r"hateful_memes/base.*scores\.json"):
        write_tables(demo_config(), results_dir, tmp_path / "tables")


def test_missing_speed_result_names_the_row(results_dir, tmp_path):
    (results_dir / "speed" / "lora-sdpa-bf16-1x1.json").unlink()
    with pytest.raises(UserError, match=r"speed row lora-sdpa-bf16-1x1.*lora-sdpa-bf16-1x1\.json"):
        write_tables(demo_config(), results_dir, tmp_path / "tables")


def test_skipped_runs_need_no_results(results_dir, tmp_path):
    config = demo_config()
    for run in config["runs"]:
        run["skip_reason"] = "needs GPU"
    for row in config["speed"]["rows"]:
        row["skip_reason"] = "needs GPU"
    shutil.rmtree(results_dir)
    files = generated(results_dir, tmp_path / "tables", config)
    assert "not run: needs GPU" in files["docvqa.md"].decode()
    assert "newest result: none" in files["speed.md"].decode()


def test_recipe_tables_as_printed():
    assert [row.reference for row in recipe_tables.NLVR2.rows] == ["89.40", "89.20", None]
    assert [row.strategy for row in recipe_tables.NLVR2.rows] == ["full", "frozen_vision", None]
    assert recipe_tables.DOCVQA.decimals == 2 and recipe_tables.HATEFUL_MEMES.decimals == 1
    assert [(r.strategy, r.precision) for r in recipe_tables.HATEFUL_MEMES.rows[::2]] == [
        ("full", "bf16"), ("frozen_vision", "bf16"), ("lora", "bf16"), ("qlora", "bf16")]
    assert recipe_tables.HATEFUL_MEMES.rows[4].lora_rank == 128
    a100, v100 = recipe_tables.SPEED_TABLES
    assert [r.img_per_s for r in a100.rows] == ["5.041", "8.657", "16.903", "33.433", "17.578",
                                                "31.736", "5.591", "12.127", "4.831", "10.545"]
    assert [(r.nodes, r.gpus, r.flash_attention) for r in a100.rows[:4]] == [
        (1, 8, False), (1, 8, True), (2, 16, True), (4, 32, True)]
    assert [r.speedup for r in v100.rows] == ["1x", "1.70x", "2.22x", "3.63x", "1.14x"]
    assert a100.rows[1].cells[3] == "&#x2714;"


def test_format_learning_rate():
    assert format_learning_rate(5e-6) == "5e-6"
    assert format_learning_rate(2e-4) == "2e-4"
    assert format_learning_rate(2.5e-5) == "2.5e-5"
