"""Regenerated tables: committed golden files, values computed from the fixture results,
byte-identical regeneration, errors naming run and file.

After a reviewed change of the tables, rewrite the golden files with
`python -m tests.evaluate.regenerate_golden` and review `git diff tests/evaluate/golden`."""

import json
import shutil

import numpy as np

import pytest
from .conftest import FIXTURES, GOLDEN, demo_config, report_files

from phi3v.errors import UserError
from phi3v.reporting import recipe_tables
from phi3v.reporting.recipe_tables import parse_accuracy_table, parse_speed_table, split_cells
from phi3v.reporting.table_format import format_learning_rate
from phi3v.reporting.tables import table_file_names, write_tables


def generated(results_dir, out_dir, config=None):
    config = config or demo_config()
    paths = write_tables(config, report_files(results_dir, config), out_dir, out_dir / "README.md")
    return {path.name: path.read_bytes() for path in paths}


def fixture_json(*parts):
    return json.loads(FIXTURES.joinpath("results", *parts).read_text())


def table_row(text, marker):
    """The cells of the one table line of `text` that contains `marker`."""
    lines = [line for line in text.splitlines() if marker in line and line.endswith("|")]
    assert len(lines) == 1, (marker, lines)
    return split_cells(lines[0])


def test_tables_equal_committed_golden_files(results_dir, tmp_path):
    # The golden files are committed and reviewed; the test never writes them.
    files = generated(results_dir, tmp_path / "tables")
    assert sorted(files) == sorted([*table_file_names(demo_config()), "README.md"])
    assert sorted(path.name for path in GOLDEN.iterdir()) == sorted(files)
    for name, data in files.items():
        assert data.decode() == (GOLDEN / name).read_text(encoding="utf-8"), name


@pytest.mark.parametrize("table", recipe_tables.ACCURACY_TABLES, ids=lambda t: t.dataset)
def test_measured_rows_show_the_fixture_results_beside_the_recipe(results_dir, tmp_path, table):
    text = generated(results_dir, tmp_path)[table.file_name].decode()
    header = split_cells(text.splitlines()[2])
    column = {name: header.index(name) for name in ("Recipe", "Δ", "Final loss")}
    runs = [run for run in demo_config()["runs"] if run["dataset"] == table.dataset]
    for run in runs:
        cells = table_row(text, f"`{run['run']}`") if run["skip_reason"] is None else None
        if cells is None:
            assert f"not run: {run['skip_reason']}" in text
            continue
        scores = fixture_json("eval", table.dataset, run["run"], "scores.json")
        metrics = fixture_json("runs", table.dataset, run["run"], "metrics.json")
        shown = round(scores["score"], table.decimals)
        low, high = interval_of(scores["per_example"]["score"], table.decimals)
        assert cells[table.metric_column] == f"{shown:.{table.decimals}f} [{low}, {high}]"
        assert cells[column["Final loss"]] == f"{metrics['final_loss']:.4f}"
        recipe = cells[column["Recipe"]]
        if recipe != "—":  # a recipe row of the same strategy and precision
            assert recipe in [row.reference for row in table.rows
                              if (row.strategy, row.precision) == (run["strategy"], run["precision"])]
            delta, side = cells[column["Δ"]].split()
            assert float(delta) == pytest.approx(shown - float(recipe))
            assert side == ("(inside)" if float(low) <= float(recipe) <= float(high) else "(outside)")
    if runs:
        base = fixture_json("eval", table.dataset, "base", "scores.json")
        low, high = interval_of(base["per_example"]["score"], table.decimals)
        assert f"{base['score']:.{table.decimals}f} [{low}, {high}]" in text.split("Before fine-tuning")[1]
        low, high = interval_of(base["per_example"]["majority_baseline"], table.decimals)
        assert f"answer): {base['majority_baseline']:.{table.decimals}f} [{low}, {high}]. Evaluated" in text
        assert f"n = {base['n']}." in text
    else:
        assert all(line.endswith("not in this preset |") for line in text.splitlines()[4:4 + len(table.rows)]
                   if "results comming soon" not in line)


def interval_of(values, decimals):
    """The 95% interval of the mean of `values` in percent, as the tables print it (independently:
    the same fixed-seed resample counts, the percentiles of the resampled means)."""
    import numpy as np
    from phi3v.evaluation.statistics import resample_counts

    counts = resample_counts(len(values))
    means = 100 * counts @ np.asarray(values) / len(values)
    return [f"{value:.{decimals}f}" for value in np.percentile(means, [2.5, 97.5])]


def test_official_scores_carry_their_intervals(results_dir, tmp_path):
    from phi3v.evaluation.statistics import auroc_of_counts, resample_counts

    files = generated(results_dir, tmp_path)
    docvqa = fixture_json("eval", "docvqa", "full-bf16-sdpa", "scores.json")
    header = split_cells(files["docvqa.md"].decode().splitlines()[2])
    cells = table_row(files["docvqa.md"].decode(), "`full-bf16-sdpa`")
    low, high = interval_of(docvqa["per_example"]["anls_official"], 2)
    assert cells[header.index("ANLS (official)")] == f"{docvqa['anls_official']:.2f} [{low}, {high}]"

    memes = fixture_json("eval", "hateful_memes", "full-bf16-sdpa", "scores.json")
    text = files["hateful_memes.md"].decode()
    header = split_cells(text.splitlines()[2])
    resampled = auroc_of_counts(memes["per_example"]["p_yes"], memes["per_example"]["is_yes"])(resample_counts(50))
    low, high = (f"{100 * v:.1f}" for v in np.nanpercentile(resampled, [2.5, 97.5]))
    assert table_row(text, "`full-bf16-sdpa`")[header.index("AUROC")] == f"{memes['auroc']:.1f} [{low}, {high}]"
    base = fixture_json("eval", "hateful_memes", "base", "scores.json")
    assert f"AUROC {base['auroc']:.1f} [" in text


def test_lmms_eval_column_only_when_configured(results_dir, tmp_path):
    assert "lmms-eval" not in generated(results_dir, tmp_path / "off")["docvqa.md"].decode()
    config = demo_config()
    config["evaluation"] = {"lmms_eval": True}
    for run in ("base", "full-bf16-sdpa", "full-bf16-eager", "lora-bf16-sdpa"):
        path = results_dir / "eval" / "docvqa" / run / "scores.json"
        scores = json.loads(path.read_text())
        scores["anls_lmms_eval"] = 50.0
        scores["per_example"]["anls_lmms_eval"] = [1.0, 0.0] * (scores["n"] // 2)
        path.write_text(json.dumps(scores))
    text = generated(results_dir, tmp_path / "on", config)["docvqa.md"].decode()
    header = split_cells(text.splitlines()[2])
    low, high = interval_of([1.0, 0.0] * 20, 2)
    assert table_row(text, "`full-bf16-sdpa`")[header.index("ANLS (lmms-eval)")] == f"50.00 [{low}, {high}]"
    assert "`ANLS (lmms-eval)`: the same model answering as lmms-eval's `docvqa_val` asks" in text


def test_speed_rows_show_the_fixture_measurements(results_dir, tmp_path):
    text = generated(results_dir, tmp_path)["speed.md"].decode()
    measured = {row["row"]: fixture_json("speed", f"{row['row']}.json")
                for row in demo_config()["speed"]["rows"] if row["skip_reason"] is None}
    baseline = {"bf16": measured["full-eager-bf16-1x1"], "fp16": measured["full-eager-fp16-1x1"]}
    for name, result in measured.items():
        cells = table_row(text, f"`{name}`")
        assert cells[5] == f"{result['img_per_s']:.3f}"
        base = baseline[result["precision"]]["img_per_s"]
        assert cells[6] == ("1x" if result is baseline[result["precision"]] else f"{result['img_per_s'] / base:.2f}x")
        assert cells[10] == ("—" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%")
        # torch's GiB in the recipe's memory column (renamed), the same in GB beside it to compare
        gib = result["peak_mem_gib"]
        assert cells[7] == (f"~{gib:.0f}" if gib >= 1 else f"~{gib:.2f}")
        gb = gib * 2**30 / 1e9
        assert cells[8] == (f"~{gb:.0f}" if gb >= 1 else f"~{gb:.2f}")
        # the Row cell says which measurements ran under DeepSpeed (the fixture's full bf16 row)
        assert cells[-1].endswith("; DeepSpeed ZeRO-2") is bool(result.get("deepspeed")), name
    assert "Peak GPU mem (GiB) | Peak GPU mem (GB)" in text
    assert "not run: flash attention needs a GPU" in text


def test_second_generation_is_byte_identical(results_dir, tmp_path):
    first = generated(results_dir, tmp_path / "a")
    second = generated(results_dir, tmp_path / "b")
    assert first == second
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp-" in p.name]


def test_missing_scores_name_the_run_and_file(results_dir, tmp_path):
    path = results_dir / "eval" / "docvqa" / "full-bf16-sdpa" / "scores.json"
    path.unlink()
    with pytest.raises(UserError, match=r"docvqa/full-bf16-sdpa.*scores\.json.*missing"):
        generated(results_dir, tmp_path / "tables")
    assert not (tmp_path / "tables" / "docvqa.md").exists()


def test_corrupt_metrics_name_the_run_and_file(results_dir, tmp_path):
    path = results_dir / "runs" / "hateful_memes" / "full-bf16-sdpa" / "metrics.json"
    path.write_text('{"final_loss": 0.4,')
    with pytest.raises(UserError, match=r"hateful_memes/full-bf16-sdpa.*metrics\.json.*not valid JSON"):
        generated(results_dir, tmp_path / "tables")


def test_scores_without_score_field_are_rejected(results_dir, tmp_path):
    path = results_dir / "eval" / "ucf101" / "lora-bf16-sdpa" / "scores.json"
    path.write_text(json.dumps({"n": 3}))
    with pytest.raises(UserError, match=r"ucf101/lora-bf16-sdpa.*lacks score"):
        generated(results_dir, tmp_path / "tables")


def test_missing_base_scores_name_the_base_run(results_dir, tmp_path):
    shutil.rmtree(results_dir / "eval" / "hateful_memes" / "base")
    with pytest.raises(UserError, match=r"hateful_memes/base.*scores\.json"):
        generated(results_dir, tmp_path / "tables")


def test_missing_speed_result_names_the_row(results_dir, tmp_path):
    (results_dir / "speed" / "lora-sdpa-bf16-1x1.json").unlink()
    with pytest.raises(UserError, match=r"speed row lora-sdpa-bf16-1x1.*lora-sdpa-bf16-1x1\.json"):
        generated(results_dir, tmp_path / "tables")


def test_a_result_not_given_as_input_is_named(results_dir, tmp_path):
    config = demo_config()
    inputs = report_files(results_dir, config)
    del inputs.files["docvqa/lora-bf16-sdpa/metrics"]
    with pytest.raises(UserError, match=r"no input 'docvqa/lora-bf16-sdpa/metrics'"):
        write_tables(config, inputs, tmp_path / "tables", tmp_path / "README.md")


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


def test_recipe_table_parsing():
    text = "Training method | data type | LoRA rank | LoRA alpha | batch size | learning rate | epochs | ANLS\n" \
           "--- | --- | --- | --- | --- | --- | --- | --- |\n" \
           "LoRA | fp16 | 32 | 16 | 64 | 2e-4 | 2 | 82.3 |\n" \
           "LoRA results comming soon |  |  |  |  |  |  |  |\n"
    table = parse_accuracy_table("x", "x.md", "X", text)
    lora, empty = table.rows
    assert (lora.strategy, lora.precision, lora.lora_rank, lora.lora_alpha, lora.batch_size) == ("lora", "fp16", 32, 16, 64)
    assert (lora.learning_rate, lora.epochs, lora.reference, table.decimals) == (2e-4, 2, "82.3", 1)
    assert (empty.strategy, empty.reference) == (None, None)
    speed = parse_speed_table("s", "S", "H", "bf16", "a | b | c | d | e | f | g | h\n--- |\n"
                              "QLoRA | 2 | 16 | &#x2714; | 64 | 4.5 | 0.9x | ~3\n")
    row = speed.rows[0]
    assert (row.strategy, row.nodes, row.gpus, row.flash_attention, row.img_per_s) == ("qlora", 2, 16, True, "4.5")


@pytest.mark.parametrize("table", recipe_tables.SPEED_TABLES, ids=lambda t: t.name)
def test_recipe_speedups_are_throughput_ratios(table):
    # A cross-check of the transcription: each printed speedup is the row's img/s over the first row's.
    first = float(table.rows[0].img_per_s)
    for row in table.rows[1:]:
        assert float(row.speedup.rstrip("x")) == pytest.approx(float(row.img_per_s) / first, abs=0.006), row


def test_format_learning_rate():
    assert format_learning_rate(5e-6) == "5e-6"
    assert format_learning_rate(2e-4) == "2e-4"
    assert format_learning_rate(2.5e-5) == "2.5e-5"


def test_best_settings_rows_get_their_own_section(results_dir, tmp_path):
    """A speed row with `settings: best` is listed under this project's best settings, with them."""
    config = demo_config()
    best = {**config["speed"]["rows"][2], "row": "lora-sdpa-bf16-1x1-best", "settings": "best",
            "memory_budget_gib": 40, "packing": True}
    config["speed"]["rows"].append(best)
    measured = {**fixture_json("speed", "lora-sdpa-bf16-1x1.json"), "img_per_s": 9.875, "settings": {
        "per_device_batch_size": 4, "gradient_checkpointing": True, "checkpointed_layers": 3,
        "packing": True, "compile_layers": True, "fused_kernels": False, "frozen_vision_no_grad": False}}
    (results_dir / "speed" / "lora-sdpa-bf16-1x1-best.json").write_text(json.dumps(measured))
    text = generated(results_dir, tmp_path, config)["speed.md"].decode()
    section = text.split("## This project's best settings")[1]
    cells = table_row(section, "`lora-sdpa-bf16-1x1-best`")
    assert cells[0] == "LoRA" and cells[5] == "9.875"
    assert cells[-2] == "batch 4/GPU, 3 layers checkpointed, packed, compiled layers"
    before = text.split("## This project's best settings")[0]
    assert "lora-sdpa-bf16-1x1-best" not in before  # not matched to a recipe row
    assert generated(results_dir, tmp_path / "plain")["speed.md"].decode().count("best settings") == 0


def test_rows_moved_by_attention_fallback_say_so_and_keep_their_recipe_row():
    from phi3v.reporting.recipe_tables import SPEED_TABLES
    from phi3v.reporting.speed_table import matches_speed_row, speed_row_note
    from phi3v.reporting.table_format import fallback_notes

    row = {"row": "lora-sdpa-bf16-1x8", "strategy": "lora", "attention": "sdpa", "precision": "bf16",
           "nodes": 1, "gpus": 8, "configured_attention": "flash_attention_2"}
    assert fallback_notes(row) == ["sdpa instead of the preset's flash_attention_2 (attention_fallback: no GPU)"]
    assert speed_row_note(row).startswith("`lora-sdpa-bf16-1x8`; sdpa instead of")
    a100 = next(table for table in SPEED_TABLES if table.precision == "bf16")
    flash_lora = [r for r in a100.rows if r.strategy == "lora" and r.flash_attention]
    assert flash_lora and all(matches_speed_row(row, r, a100) for r in flash_lora)
    assert fallback_notes({**row, "configured_attention": None}) == []


def seeded_results(results_dir, config, scores_of_seeds):
    """`docvqa/full-bf16-sdpa` as three seeds (ids `-seed<n>`), each a copy of the fixture run whose
    per-example recipe scores are `scores_of_seeds[n]`."""
    runs = []
    for run in config["runs"]:
        if (run["dataset"], run["run"]) != ("docvqa", "full-bf16-sdpa"):
            runs.append(run)
            continue
        for seed, values in enumerate(scores_of_seeds):
            name = f"full-bf16-sdpa-seed{seed}"
            runs.append({**run, "run": name, "seed": seed, "seed_group": "full-bf16-sdpa", "seeds": [seed]})
            for kind in ("eval", "runs"):
                shutil.copytree(results_dir / kind / "docvqa" / "full-bf16-sdpa", results_dir / kind / "docvqa" / name)
            path = results_dir / "eval" / "docvqa" / name / "scores.json"
            scores = json.loads(path.read_text())
            scores["per_example"]["score"] = values
            scores["score"] = 100 * sum(values) / len(values)
            path.write_text(json.dumps(scores))
            metrics = results_dir / "runs" / "docvqa" / name / "metrics.json"
            metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "final_loss": 1.0 + seed}))
    return {**config, "runs": runs}


def test_seeds_show_mean_spread_and_the_interval_of_their_mean(results_dir, tmp_path):
    from phi3v.evaluation.statistics import bootstrap_interval, mean_of_counts

    seeds = [[1.0] * 20 + [0.0] * 20, [1.0] * 24 + [0.0] * 16, [1.0] * 28 + [0.0] * 12]  # 50, 60, 70
    config = seeded_results(results_dir, demo_config(), seeds)
    text = generated(results_dir, tmp_path, config)["docvqa.md"].decode()
    cells = table_row(text, "`full-bf16-sdpa`")
    low, high = bootstrap_interval([mean_of_counts(values) for values in seeds], 40)
    header = split_cells(text.splitlines()[2])
    # mean 60, sample standard deviation 10; the interval of the per-example mean over the seeds
    assert cells[header.index("ANLS")] == f"60.00 ± 10.00 [{100 * low:.2f}, {100 * high:.2f}]"
    assert 100 * low < 60 < 100 * high
    assert cells[header.index("Final loss")] == "2.0000"  # mean of 1, 2, 3
    assert cells[header.index("Note")].startswith("`full-bf16-sdpa` (seeds 0, 1, 2); differs:")
    assert cells[header.index("Δ")] == f"{60 - 83.65:+.2f} (outside)"

    from phi3v.reporting.figures import write_figures
    paths = write_figures(config, report_files(results_dir, config), tmp_path / "figures")
    assert {path.name for path in paths} >= {"scores_docvqa.png", "loss_docvqa.png"}


def test_seeds_evaluated_on_different_examples_are_refused(results_dir, tmp_path):
    config = seeded_results(results_dir, demo_config(), [[1.0, 0.0] * 20] * 3)
    path = results_dir / "eval" / "docvqa" / "full-bf16-sdpa-seed2" / "scores.json"
    scores = json.loads(path.read_text())
    scores["per_example"]["id"][0] = "test-9999999999"
    path.write_text(json.dumps(scores))
    with pytest.raises(UserError, match=r"run docvqa/full-bf16-sdpa: the seeds were evaluated on different examples"):
        generated(results_dir, tmp_path, config)
