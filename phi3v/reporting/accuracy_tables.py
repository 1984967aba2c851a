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
from phi3v.reporting.results import ResultSources, read_base_result, read_seed_results
from phi3v.reporting.table_format import (
    MISSING,
    TableDocument,
    extend_header,
    format_learning_rate,
    model_label,
    skip_note,
    table_lines,
)
from phi3v.reporting.uncertainty import UNCERTAINTY_NOTE, estimate, format_delta_with_interval, format_estimate

# Columns of the tables for datasets the recipe has no table for (UCF-101, custom datasets).
EXTRA_COLUMNS = ("Training method", "data type", "LoRA rank", "LoRA alpha", "batch size",
                 "learning rate", "epochs")
METRIC_TITLE = {"anls": "ANLS", "accuracy": "Accuracy"}
DATASET_TITLE = {"ucf101": "UCF-101 (10-class subset)"}

ANLS_NOTE = (
    "ANLS in the table: the recipe's script's definition (the prediction stripped of whitespace, then "
    "of dots at both ends; the gold answers as they are; case-sensitive; threshold 0.5), in percent. "
    "`ANLS (official)`: the DocVQA definition (lower-cased, stripped, inner whitespace collapsed, nothing "
    "else; NL < 0.5 scores 1 - NL)."
)
LMMS_EVAL_NOTE = (
    "`ANLS (lmms-eval)`: the same model answering as lmms-eval's `docvqa_val` asks (the question, then "
    "\"Answer the question using a single word or phrase.\"; greedy, 32 new tokens, one example at a "
    "time), scored with lmms-eval's ANLS (distance over the longer unnormalised length; NL = 0.5 "
    "scores 0.5), on this table's evaluation split (lmms-eval's task evaluates DocVQA's validation split)."
)
AUROC_NOTE = (
    "AUROC: the dataset's official metric, from each example's probability of the answer \"yes\" "
    "against \"no\" at the first answer token (the evaluation's own forward pass), in percent."
)

# Scores a table shows beside the recipe's metric: column title -> key in scores.json.
OFFICIAL_COLUMNS = {"docvqa": {"ANLS (official)": "anls_official"}, "hateful_memes": {"AUROC": "auroc"}}
LMMS_EVAL_COLUMN = {"ANLS (lmms-eval)": "anls_lmms_eval"}


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
    if len(run.get("seed_runs") or []) > 1:
        note += f" (seeds {', '.join(str(seed) for seed in run['seeds'])})"
    return note + (f"; differs: {', '.join(differences)}" if differences else "")


# ---------------------------------------------------------------------------------------------
# Tables


def configured_runs(config: dict, dataset: str) -> list[dict]:
    """The dataset's table rows: one per configured run, the seeds of a multi-seed run gathered into
    one (`run` = the row's name, `seed_runs` = the runs of its seeds, `seeds`)."""
    rows: dict[str, dict] = {}
    for run in config.get("runs") or []:
        if run["dataset"] != dataset:
            continue
        name = run.get("seed_group") or run["run"]
        row = rows.setdefault(name, {**run, "run": name, "seed_runs": [], "seeds": []})
        row["seed_runs"].append(run["run"])
        row["seeds"].append(run.get("seed"))
    return list(rows.values())


def extra_score_columns(config: dict, dataset: str) -> dict[str, str]:
    """Score columns a dataset's table shows beside the recipe's metric (title -> scores.json key)."""
    columns = dict(OFFICIAL_COLUMNS.get(dataset, {}))
    if dataset == "docvqa" and (config.get("evaluation") or {}).get("lmms_eval"):
        columns.update(LMMS_EVAL_COLUMN)
    return columns


def score_notes(columns: dict[str, str], runs: Sequence[dict]) -> list[str]:
    """What the score columns mean; how uncertainty is shown, when some row has a score."""
    notes = {"anls_official": ANLS_NOTE, "anls_lmms_eval": LMMS_EVAL_NOTE, "auroc": AUROC_NOTE}
    lines = [line for key in columns.values() for line in ("", notes[key])]
    return lines + (["", UNCERTAINTY_NOTE] if any(run.get("skip_reason") is None for run in runs) else [])


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
    label = f"run {dataset}/base"
    others = "".join(f", {title} {format_estimate(estimate([base], key, label), decimals)}"
                     for title, key in extra_score_columns(config, dataset).items() if base.get(key) is not None)
    return [
        f"Before fine-tuning (base model): {metric} {format_estimate(estimate([base], 'score', label), decimals)}"
        f"{others}. "
        f"Majority baseline (always the train split's most frequent answer): "
        f"{format_estimate(estimate([base], 'majority_baseline', label), decimals)}. "
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
    others = extra_score_columns(config, table.dataset)
    added = ["Recipe", "Δ", *others, "Final loss", "Note"]
    header, separator = extend_header(table.header, table.separator, added)

    def not_run(metric_cell: str, reference: str, note: str) -> list[str]:
        return [metric_cell, reference, MISSING, *[MISSING for _ in others], MISSING, note]

    def measured(run: dict, reference: str | None, differences: list[str]) -> list[str]:
        results = read_seed_results(inputs, run, sources)
        scores, label = [result.scores for result in results], f"run {table.dataset}/{run['run']}"
        score = estimate(scores, "score", label)
        delta = format_delta_with_interval(score, reference, decimals) if reference else MISSING
        cells = [format_estimate(score, decimals), reference or MISSING, delta]
        cells += [format_estimate(estimate(scores, key, label), decimals) for key in others.values()]
        differences = differences + warmup_note(run, results[0].metrics)
        return cells + [mean_final_loss(results), run_note(run, differences)]

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
    body += score_notes(others, runs)
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


def mean_final_loss(results: Sequence) -> str:
    """The final training loss, averaged over the seeds."""
    return f"{sum(result.metrics['final_loss'] for result in results) / len(results):.4f}"


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
        results = read_seed_results(inputs, run, sources)
        score = estimate([result.scores for result in results], "score", f"run {dataset}/{run['run']}")
        rows.append([*run_cells(EXTRA_COLUMNS, run), format_estimate(score, decimals), mean_final_loss(results),
                     run_note(run, limit_notes(run) + warmup_note(run, results[0].metrics))])
    columns = [*EXTRA_COLUMNS, METRIC_TITLE.get(metric, metric), "Final loss", "Note"]
    body = table_lines(columns, rows)
    body += ["", *base_lines(config, inputs, dataset, runs, decimals, sources)]
    body += ["", "The recipe publishes no table for this task: no reference values.", "", UNCERTAINTY_NOTE]
    body += table_notes(config, runs, base=base_evaluation(config))
    title = DATASET_TITLE.get(dataset, dataset)
    return TableDocument(f"{dataset}.md", title, body, sources)
