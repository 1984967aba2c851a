"""Report figures: written under deterministic names, non-empty, errors naming the file."""

import pytest
from .conftest import demo_config, report_files

from phi3v.errors import UserError
from phi3v.reporting.figures import figure_file_names, write_figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_figures_are_written_under_their_declared_names(results_dir, tmp_path):
    config = demo_config()
    paths = write_figures(config, report_files(results_dir, config), tmp_path / "figures")
    assert [path.name for path in paths] == figure_file_names(config)
    assert figure_file_names(config) == [
        "loss_docvqa.png", "scores_docvqa.png", "loss_hateful_memes.png", "scores_hateful_memes.png",
        "loss_ucf101.png", "scores_ucf101.png", "speed_throughput.png", "speed_memory.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, path.name


def test_no_figures_for_skipped_runs(results_dir, tmp_path):
    config = demo_config()
    for run in config["runs"]:
        run["skip_reason"] = "needs GPU"
    for row in config["speed"]["rows"]:
        row["skip_reason"] = "needs GPU"
    assert write_figures(config, report_files(results_dir, config), tmp_path) == [] == figure_file_names(config)


def test_bad_training_log_line_is_named(results_dir, tmp_path):
    log = results_dir / "runs" / "ucf101" / "lora-bf16-sdpa" / "train_log.jsonl"
    log.write_text(log.read_text() + '{"step": 5}\n')
    with pytest.raises(UserError, match=r"train_log\.jsonl:5: "):
        write_figures(demo_config(), report_files(results_dir, demo_config()), tmp_path)


def test_missing_training_log_names_the_run(results_dir, tmp_path):
    (results_dir / "runs" / "docvqa" / "lora-bf16-sdpa" / "train_log.jsonl").unlink()
    with pytest.raises(UserError, match=r"docvqa/lora-bf16-sdpa.*train_log\.jsonl is missing"):
        write_figures(demo_config(), report_files(results_dir, demo_config()), tmp_path)
