"""The recipe's accuracy tables (one per dataset), and tables in their style for datasets it has none for."""

from __future__ import annotations

from typing import Sequence

from phi3v.reporting.departures import table_notes
from phi3v.layout import BASE_RUN, ReportInputs
from phi3v.training.run_config import Strategy
from phi3v.reporting.recipe_tables import (
    RECIPE_TABLE_MODEL,
    CHECK_MARK,
    METHOD_OF_STRATEGY,
    AccuracyRow,
    AccuracyTable,
    split_cells,
)
from phi3v.reporting.results import ResultSources, read_base_result, read_run_result
from phi3v.reporting.table_format import (
    MISSING,
    TableDocument,
    extend_header,
    format_delta,
    format_learning_rate,
    format_number,
    model_label,
    skip_note,
    table_lines,
)

# Columns of the tables for datasets the recipe has no table for (UCF-101, custom datasets).
EXTRA_COLUMNS = ("Training method", "data type", "LoRA rank", "LoRA alpha", "batch size",
                 "learning rate", "epochs")
METRIC_TITLE = {"anls": "ANLS", "accuracy": "Accuracy"}
DATASET_TITLE = {"ucf101": "UCF-101 (10-class subset)"}

ANLS_NOTE = (
    "ANLS in the table: the recipe's script's definition (the prediction stripped of whitespace, then "
    "of dots at both ends; the gold answers as they are; case-sensitive; threshold 0.5), in percent. "
    "`ANLS (official)`: the official DocVQA definition (case-insensitive)."
)


# ---------------------------------------------------------------------------------------------
# Cells and notes of a run


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


# ---------------------------------------------------------------------------------------------
# Tables


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
        f"Evaluated on the `{base.get('split')}` split, n = {base['n']}.",
    ]


def base_evaluation(config: dict) -> dict:
    """The base model's evaluation as a row (`run`, `attention`, `configured_attention`)."""
    evaluation = config.get("evaluation") or {}
    return {"run": BASE_RUN, "attention": evaluation.get("base_attention"),
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
        differences = differences + warmup_note(run, result.metrics)
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
    body += table_notes(config, runs, base=base_evaluation(config))
    return TableDocument(table.file_name, table.title, body, sources)


def dataset_model_label(config: dict, dataset: str) -> str:
    """The base model of a dataset's runs: its own `model` setting, else the preset's model."""
    own = (config.get("datasets") or {}).get(dataset, {}).get("model")
    if own and own.get("id") != (config.get("model") or {}).get("id"):
        return f"`{own['id']}`" + (f" @ {own['revision']}" if own.get("revision") else "")
    return model_label(config)


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
                     run_note(run, limit_notes(run) + warmup_note(run, result.metrics))])
    columns = [*EXTRA_COLUMNS, METRIC_TITLE.get(metric, metric), "Final loss", "Note"]
    body = table_lines(columns, rows)
    body += ["", *base_lines(config, inputs, dataset, runs, decimals, sources)]
    body += ["", "The recipe publishes no table for this task: no reference values."]
    body += table_notes(config, runs, base=base_evaluation(config))
    title = DATASET_TITLE.get(dataset, dataset)
    return TableDocument(f"{dataset}.md", title, body, sources)
