"""The recipe's tables regenerated from this workflow's results, beside the recipe's own values.

Every table keeps the recipe's columns, row order and number format first, then adds columns for
the recipe's value, the difference and notes. Nothing here reads the clock: regenerating from the
same results gives byte-identical files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from phi3v.files import write_text_atomic
from phi3v.layout import BASE_RUN, ReportInputs, read_metrics, read_provenance, read_scores, read_speed_row
from phi3v.data import recipe_train_turns
from phi3v.training.run_config import RunConfig, Strategy, evaluation_precision
from phi3v.reporting.recipe_tables import (
    RECIPE_TABLE_MODEL,
    ACCURACY_TABLES,
    CHECK_MARK,
    METHOD_OF_STRATEGY,
    SPEED_NOTE,
    SPEED_TABLES,
    AccuracyRow,
    AccuracyTable,
    SpeedRow,
    SpeedTable,
    split_cells,
)

NOT_IN_PRESET = "not in this preset"
MISSING = "—"
FLASH_ATTENTION = "flash_attention_2"

# Columns of the tables for datasets the recipe has no table for (UCF-101, custom datasets).
EXTRA_COLUMNS = ("Training method", "data type", "LoRA rank", "LoRA alpha", "batch size",
                 "learning rate", "epochs")
METRIC_TITLE = {"anls": "ANLS", "accuracy": "Accuracy"}
DATASET_TITLE = {"ucf101": "UCF-101 (10-class subset)"}

ANLS_NOTE = (
    "ANLS in the table: the recipe's definition (case-sensitive; whitespace and trailing dots "
    "stripped; threshold 0.5), in percent. `ANLS (official)`: the official DocVQA definition "
    "(case-insensitive)."
)


# ---------------------------------------------------------------------------------------------
# Reading results


@dataclass
class ResultSources:
    """The result files one table was built from: for its footer (commit, hardware, date)."""

    newest_mtime: float | None = None
    commits: set[str] = field(default_factory=set)
    hardware: set[str] = field(default_factory=set)

    def saw(self, path: Path) -> None:
        mtime = path.stat().st_mtime
        self.newest_mtime = mtime if self.newest_mtime is None else max(self.newest_mtime, mtime)


def note_provenance(record: dict, sources: ResultSources) -> None:
    """Remember the commit and hardware of a record written by `phi3v.provenance.collect`."""
    git = record.get("git") if isinstance(record.get("git"), dict) else {}
    if git.get("commit"):
        sources.commits.add(git["commit"][:12] + (" (with local changes)" if git.get("dirty") else ""))
    if isinstance(record.get("hardware"), dict):
        sources.hardware.add(hardware_label(record["hardware"]))


def hardware_label(hardware: dict) -> str:
    """`2x NVIDIA H100 80GB HBM3` from a provenance hardware record; the CPU when it has no GPU."""
    gpus = [gpu.get("name", "GPU") for gpu in hardware.get("gpus") or []]
    if not gpus:
        return f"CPU ({hardware.get('cpu') or 'unknown'}, {hardware.get('cpu_count')} cores)"
    names = sorted(set(gpus))
    return ", ".join(f"{gpus.count(name)}x {name}" for name in names)


@dataclass
class RunResult:
    """What a table shows of one finished run."""

    scores: dict
    metrics: dict


def read_run_result(inputs: ReportInputs, run: dict, sources: ResultSources) -> RunResult:
    dataset, name = run["dataset"], run["run"]
    label = f"run {dataset}/{name}"
    scores_path, metrics_path = inputs.scores(dataset, name), inputs.metrics(dataset, name)
    scores = read_scores(scores_path, label)
    sources.saw(scores_path)
    metrics = read_metrics(metrics_path, label)
    sources.saw(metrics_path)
    provenance = read_provenance(inputs.provenance(dataset, name))
    if provenance is not None:
        note_provenance(provenance, sources)
    return RunResult(scores, metrics)


def read_base_result(inputs: ReportInputs, dataset: str, sources: ResultSources) -> dict:
    label = f"run {dataset}/{BASE_RUN} (the model before fine-tuning)"
    path = inputs.scores(dataset, BASE_RUN)
    scores = read_scores(path, label, ("score", "n", "majority_baseline"))
    sources.saw(path)
    return scores


# ---------------------------------------------------------------------------------------------
# Formatting


def format_learning_rate(value: float) -> str:
    """`5e-6` as the recipe prints learning rates (no exponent padding)."""
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def format_delta(measured: float, reference: str, decimals: int) -> str:
    """Measured (as shown) minus the recipe's value, signed."""
    delta = round(measured, decimals) - float(reference)
    return f"{delta:+.{decimals}f}"


GIB_IN_GB = 2**30 / 1e9  # torch reports bytes; the recipe prints "GB" without saying how it measured


def format_memory(amount: float | None) -> str:
    """`~42` as the recipe prints peak memory; small values keep two decimals."""
    if amount is None:
        return MISSING
    return f"~{amount:.0f}" if amount >= 1 else f"~{amount:.2f}"


def table_lines(columns: Sequence[str], rows: Iterable[Sequence[str]], header: str | None = None,
                separator: str | None = None) -> list[str]:
    """Markdown lines; `header`/`separator` extend the recipe's own header text when given."""
    header = header if header is not None else " | ".join(columns)
    separator = separator if separator is not None else "--- | " * (len(columns) - 1) + "--- |"
    lines = [header, separator]
    for cells in rows:
        assert len(cells) == len(columns), (columns, cells)
        lines.append(" | ".join(cells) + " |")
    return lines


def extend_header(header: str, separator: str, added: Sequence[str]) -> tuple[str, str]:
    """The recipe's header and separator lines with the added columns appended."""
    header = header.rstrip().rstrip("|").rstrip() + "".join(f" | {name}" for name in added)
    separator = separator.rstrip() + "".join(" --- |" for _ in added)
    return header, separator


def run_cells(columns: Sequence[str], run: dict) -> list[str]:
    """Cells in the recipe's setting columns describing `run` as configured (for runs the recipe lacks)."""
    lora = Strategy(run["strategy"]).is_lora
    frozen_column = "Frozen vision model" in columns
    method = METHOD_OF_STRATEGY[run["strategy"]]
    if frozen_column and run["strategy"] == "frozen_vision":
        method = METHOD_OF_STRATEGY["full"]
    values = {
        "Training method": method,
        "Frozen vision model": CHECK_MARK if run["strategy"] == "frozen_vision" else "",
        "data type": run["precision"],
        "LoRA rank": str(run.get("lora_rank")) if lora else "-",
        "LoRA alpha": str(run.get("lora_alpha")) if lora else "-",
        "batch size": str(run["batch_size"]),
        "learning rate": format_learning_rate(run["learning_rate"]),
        "epochs": str(run["epochs"]),
    }
    return [values[name] for name in columns]


def differences_from_recipe(row: AccuracyRow, run: dict) -> list[str]:
    """Settings of `run` that differ from the recipe's row (and limits the recipe does not set)."""
    notes = []
    if run.get("learning_rate") is not None and run["learning_rate"] != row.learning_rate:
        notes.append(f"lr {format_learning_rate(run['learning_rate'])}")
    if run.get("epochs") is not None and run["epochs"] != row.epochs:
        notes.append(f"epochs {run['epochs']}")
    if run.get("batch_size") is not None and run["batch_size"] != row.batch_size:
        notes.append(f"batch size {run['batch_size']}")
    if row.lora_rank is not None and run.get("lora_rank") != row.lora_rank:
        notes.append(f"LoRA rank {run.get('lora_rank')}")
    if row.lora_alpha is not None and run.get("lora_alpha") != row.lora_alpha:
        notes.append(f"LoRA alpha {run.get('lora_alpha')}")
    return notes + limit_notes(run)


def option_notes(config: dict, run: dict) -> list[str]:
    """The named options by which `run` departs from the recipe (phi3v.training.run_config.RunConfig)."""
    notes = []
    task = (config.get("datasets") or {}).get(run["dataset"], {}).get("task")
    recipe_turns = recipe_train_turns(task)
    if run.get("train_turns", recipe_turns) != recipe_turns:
        notes.append(f"train_turns {run['train_turns']} (the recipe: {recipe_turns})")
    if run["strategy"] == "frozen_vision" and run.get("freeze_token_embeddings") is False:
        notes.append("token embeddings trained (freeze_token_embeddings: false)")
    if run.get("lora_on_vision") is False:
        notes.append("LoRA on the language model only (lora_on_vision: false)")
    return notes + fallback_notes(run)


def fallback_notes(row: dict) -> list[str]:
    """A run or speed row that `attention_fallback` moved off the preset's attention (no GPU here)."""
    configured = row.get("configured_attention")
    if not configured:
        return []
    return [f"{row['attention']} instead of the preset's {configured} (attention_fallback: no GPU)"]


def warmup_note(run: dict, metrics: dict) -> list[str]:
    """The recipe's fixed 50-step warm-up can outlast a short run: say so, the rate never peaks."""
    steps, warmup = metrics.get("steps"), run.get("warmup_steps")
    if steps and warmup and steps <= warmup:
        return [f"all {steps} steps inside the {warmup}-step warm-up: lr peaks at "
                f"{format_learning_rate(run['learning_rate'] * steps / warmup)}"]
    return []


def limit_notes(run: dict) -> list[str]:
    notes = []
    if run.get("max_steps"):
        notes.append(f"at most {run['max_steps']} steps")
    if run.get("max_train_samples"):
        notes.append(f"{run['max_train_samples']} training samples")
    return notes


def run_note(run: dict, differences: Sequence[str]) -> str:
    note = f"`{run['run']}`"
    return note + (f"; differs: {', '.join(differences)}" if differences else "")


def skip_note(run: dict | None) -> str:
    return NOT_IN_PRESET if run is None else f"not run: {run['skip_reason']}"


# ---------------------------------------------------------------------------------------------
# Footer


def model_label(config: dict) -> str:
    model = config.get("model") or {}
    if model.get("source") == "demo":
        return "tiny Phi-3.5-vision (same architecture, small widths), pre-trained by the workflow"
    label = f"`{model.get('id')}`"
    if model.get("revision"):
        label += f" @ {model['revision']}"
    return label


def config_hardware_label(config: dict) -> str:
    hardware = config.get("hardware") or {}
    return (f"{hardware.get('accelerator', 'unknown')}, {hardware.get('nodes', 1)} node(s) x "
            f"{hardware.get('gpus_per_node', 1)} device(s) (as configured)")


def footer_lines(config: dict, sources: ResultSources) -> list[str]:
    hardware = "; ".join(sorted(sources.hardware)) or config_hardware_label(config)
    commit = ", ".join(sorted(sources.commits)) or "not recorded"
    if sources.newest_mtime is None:
        date = "none"
    else:
        moment = datetime.datetime.fromtimestamp(sources.newest_mtime, tz=datetime.timezone.utc)
        date = moment.strftime("%Y-%m-%d")
    return [
        f"Preset `{config.get('preset')}` · model {model_label(config)} · hardware: {hardware} · "
        f"commit {commit} · newest result: {date}.",
    ]


# ---------------------------------------------------------------------------------------------
# Accuracy tables


@dataclass
class TableDocument:
    """One regenerated table: its file name, title, body lines and the results it was built from."""

    file_name: str
    title: str
    body: list[str]
    sources: ResultSources


def configured_runs(config: dict, dataset: str) -> list[dict]:
    return [run for run in config.get("runs") or [] if run["dataset"] == dataset]


def match_accuracy_rows(runs: Sequence[dict], table: AccuracyTable) -> list[dict | None]:
    """For each recipe row, the first unused configured run with its strategy and precision
    (attention may differ), or None."""
    used: set[str] = set()
    matched = []
    for row in table.rows:
        run = next((r for r in runs if r["run"] not in used and row.strategy is not None
                    and (r["strategy"], r["precision"]) == (row.strategy, row.precision)), None)
        if run is not None:
            used.add(run["run"])
        matched.append(run)
    return matched


def recipe_references(config: dict, table: AccuracyTable) -> dict[str, float]:
    """Configured run name -> the recipe's value of the row it reproduces (as in the table)."""
    runs = configured_runs(config, table.dataset)
    return {
        run["run"]: float(row.reference)
        for row, run in zip(table.rows, match_accuracy_rows(runs, table))
        if run is not None and row.reference
    }


def base_lines(config: dict, inputs: ReportInputs, dataset: str, runs: Sequence[dict], decimals: int,
               sources: ResultSources) -> list[str]:
    """The 'before fine-tuning' line and the majority baseline, from the base model's scores."""
    if not any(run.get("skip_reason") is None for run in runs):
        return ["Before fine-tuning: not evaluated (no run of this task in this preset)."]
    base = read_base_result(inputs, dataset, sources)
    metric = METRIC_TITLE.get(base.get("metric"), "score")
    return [
        f"Before fine-tuning (base model): {metric} {format_number(base['score'], decimals)}. "
        f"Majority baseline (always the train split's most frequent answer): "
        f"{format_number(base['majority_baseline'], decimals)}. "
        f"Evaluated on the `{base.get('split')}` split, n = {base['n']}."
        + "".join(f" Attention: {note}." for note in fallback_notes(base_evaluation(config))),
    ]


def base_evaluation(config: dict) -> dict:
    """The base model's evaluation settings as a row (`attention`, `configured_attention`)."""
    evaluation = config.get("evaluation") or {}
    return {"attention": evaluation.get("base_attention"),
            "configured_attention": evaluation.get("configured_base_attention")}


def accuracy_document(config: dict, inputs: ReportInputs, table: AccuracyTable) -> TableDocument:
    sources = ResultSources()
    decimals = table.decimals
    runs = configured_runs(config, table.dataset)
    official = table.dataset == "docvqa"
    added = ["Recipe", "Δ", *(["ANLS (official)"] if official else []), "Final loss", "Note"]
    header, separator = extend_header(table.header, table.separator, added)

    def not_run(metric_cell: str, reference: str, note: str) -> list[str]:
        return [metric_cell, reference, MISSING, *([MISSING] if official else []), MISSING, note]

    def measured(run: dict, reference: str | None, differences: list[str]) -> list[str]:
        result = read_run_result(inputs, run, sources)
        score = result.scores["score"]
        delta = format_delta(score, reference, decimals) if reference else MISSING
        cells = [format_number(score, decimals), reference or MISSING, delta]
        if official:
            cells.append(format_official(result.scores, decimals))
        differences = differences + option_notes(config, run) + warmup_note(run, result.metrics)
        return cells + [f"{result.metrics['final_loss']:.4f}", run_note(run, differences)]

    matched = match_accuracy_rows(runs, table)
    rows = []
    for row, run in zip(table.rows, matched):
        if row.strategy is None:
            rows.append([*row.cells[:-1], *not_run("", MISSING, "no run in the recipe")])
        elif run is None or run.get("skip_reason") is not None:
            rows.append([*row.cells[:-1], *not_run(MISSING, row.reference, skip_note(run))])
        else:
            rows.append([*row.cells[:-1], *measured(run, row.reference, differences_from_recipe(row, run))])

    # Configured runs the recipe has no row for come after the recipe's rows.
    used = {run["run"] for run in matched if run is not None}
    for run in runs:
        if run["run"] in used:
            continue
        if run.get("skip_reason") is not None:
            rows.append(run_cells(table.columns[:-1], run) + not_run(MISSING, MISSING, skip_note(run)))
        else:
            rows.append(run_cells(table.columns[:-1], run) + measured(run, None, limit_notes(run)))

    body = table_lines(split_cells(header), rows, header, separator)
    body += ["", *base_lines(config, inputs, table.dataset, runs, decimals, sources)]
    if official:
        body += ["", ANLS_NOTE]
    if "Phi-3-vision" in table.title:
        body += ["", f"The recipe's values in this table were measured with `{RECIPE_TABLE_MODEL}`; "
                     f"these runs started from {dataset_model_label(config, table.dataset)} (set "
                     f"`datasets.{table.dataset}.model` to `{RECIPE_TABLE_MODEL}` to reproduce them on it)."]
    body += lora_evaluation_note(runs)
    return TableDocument(table.file_name, table.title, body, sources)


def dataset_model_label(config: dict, dataset: str) -> str:
    """The base model of a dataset's runs: its own `model` setting, else the preset's model."""
    own = (config.get("datasets") or {}).get(dataset, {}).get("model")
    if own and own.get("id") != (config.get("model") or {}).get("id"):
        return f"`{own['id']}`" + (f" @ {own['revision']}" if own.get("revision") else "")
    return model_label(config)


def lora_evaluation_note(runs: Sequence[dict]) -> list[str]:
    """How LoRA rows were evaluated, beside how the recipe evaluates them."""
    lora = [run for run in runs if Strategy(run["strategy"]).is_lora and run.get("skip_reason") is None]
    if not lora:
        return []
    def evaluated_in(run: dict) -> str:
        return evaluation_precision(RunConfig(**{k: v for k, v in run.items() if k in RunConfig.fields()}))

    precisions = sorted(f"`{run['run']}` in {evaluated_in(run)}" for run in lora)
    return ["", "LoRA/QLoRA rows: evaluated on the adapter merged into the unquantised base in fp32, then "
                f"loaded in the precision the recipe evaluates them in ({', '.join(precisions)}); the recipe "
                "loads the adapter unmerged onto the base reloaded without quantisation: the same function "
                "up to rounding."]


def format_official(scores: dict, decimals: int) -> str:
    value = scores.get("anls_official")
    return MISSING if value is None else format_number(value, decimals)


def extra_document(config: dict, inputs: ReportInputs, dataset: str) -> TableDocument:
    """A table in the recipe's style for a dataset the recipe publishes no table for."""
    sources = ResultSources()
    decimals = 2
    runs = configured_runs(config, dataset)
    metric = (config.get("datasets") or {}).get(dataset, {}).get("metric", "accuracy")
    rows = []
    for run in runs:
        if run.get("skip_reason") is not None:
            rows.append([*run_cells(EXTRA_COLUMNS, run), MISSING, MISSING, skip_note(run)])
            continue
        result = read_run_result(inputs, run, sources)
        rows.append([*run_cells(EXTRA_COLUMNS, run), format_number(result.scores["score"], decimals),
                     f"{result.metrics['final_loss']:.4f}",
                     run_note(run, limit_notes(run) + option_notes(config, run) + warmup_note(run, result.metrics))])
    columns = [*EXTRA_COLUMNS, METRIC_TITLE.get(metric, metric), "Final loss", "Note"]
    body = table_lines(columns, rows)
    body += ["", *base_lines(config, inputs, dataset, runs, decimals, sources)]
    body += ["", "The recipe publishes no table for this task: no reference values."]
    title = DATASET_TITLE.get(dataset, dataset)
    return TableDocument(f"{dataset}.md", title, body, sources)


# ---------------------------------------------------------------------------------------------
# Speed table

RECIPE_SETTINGS, BEST_SETTINGS = "recipe", "best"  # a speed row's `settings`
BEST_SETTINGS_TITLE = "This project's best settings"


def settings_summary(settings: dict | None) -> str:
    """The settings a row ran with, in a few words (what differs from the recipe's step)."""
    if not settings:
        return MISSING
    layers = settings.get("checkpointed_layers")
    words = [f"batch {settings.get('per_device_batch_size', 1)}/GPU",
             ("no checkpointing" if not settings.get("gradient_checkpointing")
              else f"{'all' if layers is None else layers} layers checkpointed")]
    words += [label for key, label in (("packing", "packed"), ("compile_layers", "compiled layers"),
                                       ("fused_kernels", "Liger kernels"),
                                       ("frozen_vision_no_grad", "frozen vision without autograd"))
              if settings.get(key)]
    return ", ".join(words)


def settings_speed_lines(measured_rows: Sequence[tuple[str, dict]]) -> list[str]:
    """A speed table of (row name, measurement) with the recipe table's columns plus the settings used."""
    columns = ["Training method", "Nodes", "GPUs", "Flash attention", "Effective batch", "img/s",
               "Speedup", "Peak mem (GiB)", "Peak mem (GB)", "Tokens/s", "MFU", "data type", "Settings", "Row"]
    lines = []
    for name, measured in measured_rows:
        cells = measured_speed_cells(METHOD_OF_STRATEGY[measured["strategy"]], measured, None, False)
        lines.append([*cells, *extra_speed_cells(measured), settings_summary(measured.get("settings")),
                      f"`{name}`"])
    return table_lines(columns, lines)


def matches_speed_row(config_row: dict, recipe_row, table: SpeedTable) -> bool:
    return (
        config_row.get("settings", RECIPE_SETTINGS) == RECIPE_SETTINGS
        and config_row["strategy"] == recipe_row.strategy
        and (configured_attention(config_row) == FLASH_ATTENTION) == recipe_row.flash_attention
        and config_row["nodes"] == recipe_row.nodes
        and config_row["precision"] == table.precision
    )


def configured_attention(row: dict) -> str:
    """The attention the preset gave a row (before any `attention_fallback`)."""
    return row.get("configured_attention") or row["attention"]


def speed_row_note(row: dict) -> str:
    return "; ".join([f"`{row['row']}`", *fallback_notes(row)])


def match_speed_rows(config_rows: Sequence[dict], table: SpeedTable, used: set[str]) -> list[dict | None]:
    """For each recipe row, the first unused configured row it matches (None if none); marks them used."""
    matched = []
    for recipe_row in table.rows:
        row = next((r for r in config_rows if r["row"] not in used
                    and matches_speed_row(r, recipe_row, table)), None)
        if row is not None:
            used.add(row["row"])
        matched.append(row)
    return matched


def speed_references(config: dict) -> dict[str, tuple[SpeedTable, SpeedRow]]:
    """Configured speed row name -> the recipe table and row it reproduces."""
    config_rows = (config.get("speed") or {}).get("rows") or []
    used: set[str] = set()
    references = {}
    for table in SPEED_TABLES:
        for recipe_row, row in zip(table.rows, match_speed_rows(config_rows, table, used)):
            if row is not None:
                references[row["row"]] = (table, recipe_row)
    return references


def read_speed_result(inputs: ReportInputs, config_row: dict, sources: ResultSources) -> dict:
    path = inputs.speed(config_row["row"])
    data = read_speed_row(path, f"speed row {config_row['row']}")
    sources.saw(path)
    note_provenance(data, sources)
    if data.get("device") and not isinstance(data.get("hardware"), dict):
        sources.hardware.add(f"{data.get('nodes', 1) * data.get('gpus', 1)}x {data['device']}")
    return data


def measured_speed_cells(method: str, measured: dict, baseline: float | None, is_baseline: bool) -> list[str]:
    """The recipe's speed columns filled with one measurement."""
    img_per_s = measured["img_per_s"]
    if is_baseline:
        speedup = "1x"
    elif baseline:
        speedup = f"{img_per_s / baseline:.2f}x"
    else:
        speedup = MISSING
    return [
        method,
        str(measured.get("nodes", 1)),
        str(measured.get("gpus", 1)),
        CHECK_MARK if measured.get("attention") == FLASH_ATTENTION else "",
        str(measured.get("effective_batch", MISSING)),
        f"{img_per_s:.3f}",
        speedup,
        format_memory(measured.get("peak_mem_gib")),
    ]


def extra_speed_cells(measured: dict) -> list[str]:
    tokens = measured.get("tokens_per_s")
    mfu = measured.get("mfu")
    gib = measured.get("peak_mem_gib")
    return [
        format_memory(None if gib is None else gib * GIB_IN_GB),
        MISSING if tokens is None else f"{tokens:.1f}",
        MISSING if mfu is None else f"{100 * mfu:.1f}%",
        measured.get("precision", MISSING),
    ]


def speed_section(config: dict, inputs: ReportInputs, table: SpeedTable, used: set[str],
                  extra_rows: Sequence[dict], sources: ResultSources) -> list[str]:
    """One recipe speed table with this workflow's measurements in its columns."""
    hw = table.hardware
    added = ["Peak GPU mem (GB)", "Tokens/s", "MFU", "data type", f"{hw} GPUs", f"{hw} img/s",
             f"{hw} speedup", f"{hw} mem (GB)", "Row"]
    # the measured column holds what torch measures, GiB; the added GB column converts it to compare
    header, separator = extend_header(table.header.replace("Peak GPU mem (GB)", "Peak GPU mem (GiB)"),
                                      table.separator, added)
    config_rows = (config.get("speed") or {}).get("rows") or []

    matched = match_speed_rows(config_rows, table, used)

    def measurement(row: dict | None) -> dict | None:
        if row is None or row.get("skip_reason") is not None:
            return None
        return read_speed_result(inputs, row, sources)

    measurements = [measurement(row) for row in matched]
    baseline = measurements[0]["img_per_s"] if measurements[0] else None

    lines_rows = []
    for index, (recipe_row, row, measured) in enumerate(zip(table.rows, matched, measurements)):
        reference = [str(recipe_row.gpus), recipe_row.img_per_s, recipe_row.speedup,
                     recipe_row.peak_mem_gb]
        if measured is None:
            cells = [*recipe_row.cells[:5], MISSING, MISSING, MISSING, MISSING, MISSING, MISSING, table.precision]
            lines_rows.append([*cells, *reference, skip_note(row)])
            continue
        cells = measured_speed_cells(recipe_row.cells[0], measured, baseline, index == 0)
        lines_rows.append([*cells, *extra_speed_cells(measured), *reference, speed_row_note(row)])

    # Rows of the preset with no counterpart in the recipe, in this table's precision.
    for row in extra_rows:
        if row["row"] in used or row["precision"] != table.precision:
            continue
        used.add(row["row"])
        measured = measurement(row)
        method = METHOD_OF_STRATEGY[row["strategy"]]
        if measured is None:
            flash = CHECK_MARK if row["attention"] == FLASH_ATTENTION else ""
            cells = [method, str(row["nodes"]), str(row["gpus"]), flash, str(row["effective_batch"]),
                     MISSING, MISSING, MISSING, MISSING, MISSING, MISSING, row["precision"]]
            lines_rows.append([*cells, MISSING, MISSING, MISSING, MISSING, skip_note(row)])
            continue
        cells = measured_speed_cells(method, measured, baseline, False)
        lines_rows.append([*cells, *extra_speed_cells(measured), MISSING, MISSING, MISSING, MISSING,
                           speed_row_note(row)])

    return [f"## {table.title}", "", *table_lines(split_cells(header), lines_rows, header, separator)]


def speed_document(config: dict, inputs: ReportInputs) -> TableDocument:
    sources = ResultSources()
    used: set[str] = set()
    config_rows = (config.get("speed") or {}).get("rows") or []
    body = [SPEED_NOTE, ""]
    weights = (config.get("speed") or {}).get("weights")
    best_rows = [row for row in config_rows if row.get("settings") == BEST_SETTINGS]
    recipe_rows = [row for row in config_rows if row.get("settings") != BEST_SETTINGS]
    for table in SPEED_TABLES:
        body += speed_section(config, inputs, table, used, recipe_rows, sources) + [""]
    if best_rows:
        measured = [(row["row"], read_speed_result(inputs, row, sources)) for row in best_rows
                    if row.get("skip_reason") is None]
        body += [f"## {BEST_SETTINGS_TITLE}", "", *settings_speed_lines(measured), ""]
        used.update(row["row"] for row in best_rows)
    leftover = [row["row"] for row in config_rows if row["row"] not in used]
    if leftover:
        body += [f"Rows of this preset in neither table's precision: {', '.join(leftover)}.", ""]
    body += [
        "Measured columns: this workflow's benchmark (img/s counted over the measured steps after "
        f"warm-up; peak memory: torch's peak allocation in GiB, and the same in GB (1 GiB = 1.074 GB) "
        f"beside the recipe's \"GB\", whose unit the recipe does not define; weights: "
        f"{weights or 'as configured'}). Speedup: against the table's first row as measured here. "
        "The recipe's columns are its 8-GPU reference values, measured with Phi-3-vision (the same "
        "architecture and sizes as Phi-3.5-vision).",
        "",
        "The recipe does not say in which precision its A100 rows without flash attention ran; its "
        "script loads fp32 weights with eager attention when flash attention is off, and its guide "
        "recommends bf16 wherever the GPU has it. Those rows run here in bf16 (fp32-loaded weights, "
        "eager attention; full-parameter rows cast to bf16 by DeepSpeed). The V100 rows run in fp16 "
        "mixed precision with eager attention, as the guide says.",
    ]
    return TableDocument("speed.md", "Speed benchmarking", body, sources)


# ---------------------------------------------------------------------------------------------
# Files


def render(document: TableDocument, config: dict, level: int = 1) -> str:
    """A document as markdown; `level` 2 nests it under the results README."""
    body = [("#" * (level - 1) + line) if line.startswith("## ") else line for line in document.body]
    lines = ["#" * level + f" {document.title}", "", *body, "", *footer_lines(config, document.sources)]
    return "\n".join(lines) + "\n"


def extra_datasets(config: dict) -> list[str]:
    """Datasets with runs but no table in the recipe (UCF-101, custom ones), in configuration order."""
    recipe_datasets = {table.dataset for table in ACCURACY_TABLES}
    return list(dict.fromkeys(run["dataset"] for run in config.get("runs") or []
                              if run["dataset"] not in recipe_datasets))


def table_documents(config: dict, inputs: ReportInputs) -> list[TableDocument]:
    """Every table the configuration calls for: the recipe's four, then one per extra dataset."""
    documents = [accuracy_document(config, inputs, table) for table in ACCURACY_TABLES]
    documents.append(speed_document(config, inputs))
    documents += [extra_document(config, inputs, dataset) for dataset in extra_datasets(config)]
    return documents


def table_file_names(config: dict) -> list[str]:
    """The file names `write_tables` writes into its folder."""
    return ([table.file_name for table in ACCURACY_TABLES] + ["speed.md"]
            + [f"{dataset}.md" for dataset in extra_datasets(config)])


def write_tables(config: dict, inputs: ReportInputs, out_dir: str | os.PathLike,
                 readme: str | os.PathLike) -> list[Path]:
    """Write one markdown file per table into `out_dir`, and `readme` gathering them all.

    `inputs` are the result files the tables read. Returns the written paths. Raises UserError
    naming the run and the file when a result a table needs is missing or corrupt.
    """
    out_dir = Path(out_dir)
    documents = table_documents(config, inputs)
    written = []
    for document in documents:
        path = out_dir / document.file_name
        write_text_atomic(path, render(document, config))
        written.append(path)
    sections = [render(document, config, level=2) for document in documents]
    write_text_atomic(readme, f"# Results of preset `{config.get('preset')}`\n\n" + "\n".join(sections))
    return [*written, Path(readme)]
