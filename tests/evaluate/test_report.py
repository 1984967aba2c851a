"""Report figures: written under deterministic names, non-empty, errors naming the file."""

import pytest
from .conftest import demo_config, report_files

from phi3v.errors import UserError
from phi3v.reporting.figures import figure_file_names, nothing_ran_figure, throughput_figure, write_figures

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


def test_when_nothing_ran_one_figure_says_what_was_skipped_and_why(results_dir, tmp_path):
    # e.g. `runs_filter=[speed/*]` on a machine that runs none of the rows: the workflow's declared
    # figures folder must still be written (it was missing: MissingOutputException after the other jobs)
    config = demo_config()
    for run in config["runs"]:
        run["skip_reason"] = "needs GPU"
    for row in config["speed"]["rows"]:
        row["skip_reason"] = "needs 2 nodes, the partition has 1"
    [path] = write_figures(config, report_files(results_dir, config), tmp_path / "figures")
    assert [path.name] == figure_file_names(config) == ["not_run.png"] and path.parent == tmp_path / "figures"
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    shown = "\n".join(text.get_text() for text in nothing_ran_figure(config).axes[0].texts)
    assert "skipped run docvqa/full-bf16-sdpa: needs GPU (on_unsupported: skip)" in shown
    row = config["speed"]["rows"][0]["row"]
    assert f"skipped speed row {row}: needs 2 nodes, the partition has 1 (on_unsupported: skip)" in shown


def test_skipped_speed_rows_beside_finished_runs_get_no_speed_figures(results_dir, tmp_path):
    config = demo_config()
    for row in config["speed"]["rows"]:
        row["skip_reason"] = "needs GPU"
    names = [path.name for path in write_figures(config, report_files(results_dir, config), tmp_path)]
    assert names == figure_file_names(config) and names[-1] == "scores_ucf101.png"


def test_bad_training_log_line_is_named(results_dir, tmp_path):
    log = results_dir / "runs" / "ucf101" / "lora-bf16-sdpa" / "train_log.jsonl"
    log.write_text(log.read_text() + '{"step": 5}\n')
    with pytest.raises(UserError, match=r"train_log\.jsonl:5: "):
        write_figures(demo_config(), report_files(results_dir, demo_config()), tmp_path)


def test_missing_training_log_names_the_run(results_dir, tmp_path):
    (results_dir / "runs" / "docvqa" / "lora-bf16-sdpa" / "train_log.jsonl").unlink()
    with pytest.raises(UserError, match=r"docvqa/lora-bf16-sdpa.*train_log\.jsonl is missing"):
        write_figures(demo_config(), report_files(results_dir, demo_config()), tmp_path)


def legend_and_title(figure) -> tuple[str, list[str]]:
    axes = figure.axes[0]
    return axes.get_title(), [text.get_text() for text in axes.get_legend().get_texts()]


def test_cpu_speed_figure_is_titled_as_what_ran_and_has_no_recipe_bars():
    config = demo_config()
    rows = [row for row in config["speed"]["rows"] if row["skip_reason"] is None]
    results = [{"img_per_s": 1.5, "device": "cpu (2 threads)", "gpus": 0, "weights": "random"} for _ in rows]
    title, legend = legend_and_title(throughput_figure(config, rows, results))
    assert title == "Training throughput: tiny demo model (random weights) on cpu (2 threads)"
    assert legend == ["measured: cpu (2 threads)"]  # the recipe's 8-GPU numbers are not beside them


def test_gpu_speed_figure_labels_each_bar_group_with_its_hardware():
    from phi3v.workflow import settings

    config = settings.resolve_config({"preset": "paper", "runs_filter": ["docvqa/lora-bf16-*", "speed/*-1x8"]})
    rows = [row for row in config["speed"]["rows"] if row["skip_reason"] is None]
    assert rows
    results = [{"img_per_s": 10.0, "device": "NVIDIA H100 80GB HBM3", "gpus": 8, "weights": "random"} for _ in rows]
    title, legend = legend_and_title(throughput_figure(config, rows, results))
    assert title == "Training throughput: Phi-3.5-vision-instruct (random weights) on 8x NVIDIA H100 80GB HBM3"
    assert legend[0] == "measured: 8x NVIDIA H100 80GB HBM3"
    assert legend[1:] and all(label.startswith("recipe: 8x ") for label in legend[1:])


def test_score_bars_reach_to_their_intervals():
    from phi3v.reporting.figures import error_bars
    from phi3v.reporting.uncertainty import Estimate

    bars = error_bars([Estimate(60.0, None, (50.0, 75.0)), Estimate(40.0, 2.0, None)])
    assert bars == [[10.0, 0.0], [15.0, 0.0]]
