"""Figures for `snakemake --report`: loss curves, scores against the recipe, speed and memory.

File names depend only on the configuration (`figure_file_names`), so the workflow can declare
them as outputs before anything has run. When nothing ran (every selected run and speed row
skipped), one figure says so and why: the declared folder is never missing or empty.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

from phi3v.files import atomic_path  # noqa: E402
from phi3v.layout import ReportInputs, read_train_log  # noqa: E402
from phi3v.reporting.accuracy_tables import configured_runs, recipe_references  # noqa: E402
from phi3v.reporting.recipe_tables import ACCURACY_TABLES  # noqa: E402
from phi3v.reporting.results import (ResultSources, read_base_result, read_seed_results, read_speed_result,  # noqa: E402
                                     skipped_lines)
from phi3v.reporting.speed_table import speed_references  # noqa: E402
from phi3v.reporting.uncertainty import CONFIDENCE, estimate  # noqa: E402

# Fixed metadata keeps the PNG bytes a function of the data alone.
PNG_METADATA = {"Software": None}
NOTHING_RAN = "not_run.png"


def finished_runs(config: dict, dataset: str) -> list[dict]:
    return [run for run in configured_runs(config, dataset) if run.get("skip_reason") is None]


def run_datasets(config: dict) -> list[str]:
    """Datasets with at least one run that is not skipped, in configuration order."""
    datasets: list[str] = []
    for run in config.get("runs") or []:
        if run.get("skip_reason") is None and run["dataset"] not in datasets:
            datasets.append(run["dataset"])
    return datasets


def measured_speed_rows(config: dict) -> list[dict]:
    rows = (config.get("speed") or {}).get("rows") or []
    return [row for row in rows if row.get("skip_reason") is None]


def figure_file_names(config: dict) -> list[str]:
    """The PNG files `write_figures` writes for this configuration."""
    names = []
    for dataset in run_datasets(config):
        names += [f"loss_{dataset}.png", f"scores_{dataset}.png"]
    if measured_speed_rows(config):
        names += ["speed_throughput.png", "speed_memory.png"]
    return names or [NOTHING_RAN]


def save(figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, metadata=PNG_METADATA)
    plt.close(figure)
    return path


def loss_figure(config: dict, inputs: ReportInputs, dataset: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    for run in finished_runs(config, dataset):
        for name in run["seed_runs"]:  # one curve per seed
            steps, losses = read_train_log(inputs.train_log(dataset, name), f"run {dataset}/{name}")
            axes.plot(steps, losses, label=name, linewidth=1.2)
    axes.set(title=f"Training loss: {dataset}", xlabel="optimizer step", ylabel="loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save(figure, path)


def error_bars(estimates: list) -> list[list[float]]:
    """Matplotlib's (2, N) distances below and above each bar to its interval (0 without one)."""
    below = [e.mean - e.interval[0] if e.interval else 0.0 for e in estimates]
    above = [e.interval[1] - e.mean if e.interval else 0.0 for e in estimates]
    return [below, above]


def scores_figure(config: dict, inputs: ReportInputs, dataset: str, path: Path) -> Path:
    """Each run's score (mean over its seeds) with its bootstrap interval, beside the recipe's value
    for its row; base model and majority as lines."""
    sources = ResultSources()
    table = next((t for t in ACCURACY_TABLES if t.dataset == dataset), None)
    references = recipe_references(config, table) if table else {}
    runs = finished_runs(config, dataset)
    measured = [estimate([result.scores for result in read_seed_results(inputs, run, sources)], "score",
                         f"run {dataset}/{run['run']}") for run in runs]
    base = read_base_result(inputs, dataset, sources)

    figure, axes = plt.subplots(figsize=(max(5, 1.3 * len(runs) + 2), 4))
    positions = list(range(len(runs)))
    width = 0.38
    axes.bar([p - width / 2 for p in positions], [e.mean for e in measured], width, label="this workflow",
             yerr=error_bars(measured), capsize=3, error_kw={"linewidth": 1})
    reference_positions = [p + width / 2 for p, run in zip(positions, runs) if run["run"] in references]
    reference_values = [references[run["run"]] for run in runs if run["run"] in references]
    if reference_values:
        axes.bar(reference_positions, reference_values, width, label="recipe", color="tab:gray")
    axes.axhline(base["score"], color="tab:red", linestyle="--", linewidth=1, label="before fine-tuning")
    axes.axhline(base["majority_baseline"], color="tab:green", linestyle=":", linewidth=1,
                 label="majority baseline")
    axes.set_xticks(positions, [run["run"] for run in runs], rotation=30, ha="right", fontsize=8)
    metric = base.get("metric", "score")
    axes.set(title=f"{dataset}: {metric} (%), bars: {CONFIDENCE:.0%} bootstrap interval", ylabel=metric,
             ylim=(0, 100))
    axes.title.set_fontsize(9)
    axes.legend(fontsize=8)
    return save(figure, path)


def on_cpu(result: dict) -> bool:
    return str(result.get("device", "cpu")).startswith("cpu") or not result.get("gpus")


def hardware_label(results: list[dict]) -> str:
    """Where the rows were measured, from their result files: `cpu (2 threads)`, `8x NVIDIA A100-SXM4-80GB`."""
    labels = []
    for result in results:
        device = result.get("device") or "an unknown device"
        label = device if on_cpu(result) else f"{result['gpus']}x {device}"
        if label not in labels:
            labels.append(label)
    return ", ".join(labels)


def model_label(config: dict, results: list[dict]) -> str:
    """Which model was timed: the demo's tiny model or the configured one, and its weights."""
    model = config.get("model") or {}
    name = "tiny demo model" if model.get("source") == "demo" else str(model.get("id", "model")).split("/")[-1]
    weights = sorted({str(result.get("weights")) for result in results if result.get("weights")})
    return f"{name} ({', '.join(weights)} weights)" if weights else name


def throughput_figure(config: dict, rows: list[dict], results: list[dict]):
    """Measured img/s per row; the recipe's values beside them only when the rows ran on GPUs, each
    group labelled with its hardware (a CPU's img/s next to 8 GPUs' would compare nothing)."""
    references = speed_references(config)
    names = [row["row"] for row in rows]
    positions = list(range(len(rows)))
    width = 0.38
    hardware = hardware_label(results)
    figure, axes = plt.subplots(figsize=(max(5, 1.3 * len(rows) + 2), 4))
    gpu_rows = not any(on_cpu(result) for result in results)
    referenced = [(p, references[n]) for p, n in zip(positions, names) if n in references] if gpu_rows else []
    offset = width / 2 if referenced else 0.0
    axes.bar([p - offset for p in positions], [r["img_per_s"] for r in results], width,
             label=f"measured: {hardware}")
    groups: dict[str, list[tuple[int, float]]] = {}
    for position, (table, recipe_row) in referenced:
        groups.setdefault(f"recipe: {recipe_row.gpus}x {table.hardware}", []).append((position, float(recipe_row.img_per_s)))
    for (label, bars), colour in zip(groups.items(), ["tab:gray", "tab:olive", "tab:brown"]):
        axes.bar([p + offset for p, _ in bars], [value for _, value in bars], width, color=colour, label=label)
    axes.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    axes.set(title=f"Training throughput: {model_label(config, results)} on {hardware}", ylabel="images / s")
    axes.title.set_fontsize(9)
    axes.legend(fontsize=8)
    return figure


def speed_figures(config: dict, inputs: ReportInputs, throughput_path: Path, memory_path: Path) -> list[Path]:
    sources = ResultSources()
    rows = measured_speed_rows(config)
    results = [read_speed_result(inputs, row, sources) for row in rows]
    written = [save(throughput_figure(config, rows, results), throughput_path)]

    names = [row["row"] for row in rows]
    positions = list(range(len(rows)))
    figure, axes = plt.subplots(figsize=(max(5, 1.3 * len(rows) + 2), 4))
    memory = [r.get("peak_mem_gib") or 0.0 for r in results]
    axes.bar(positions, memory, 0.6, label="measured")
    axes.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    axes.set(title=f"Peak memory: {model_label(config, results)} on {hardware_label(results)}", ylabel="GiB")
    axes.title.set_fontsize(9)
    written.append(save(figure, memory_path))
    return written


def nothing_ran_figure(config: dict):
    """What was selected and why none of it ran (`on_unsupported: skip`)."""
    lines = skipped_lines(config) or ["the configuration selects no run and no speed row"]
    lines = [wrapped for line in lines for wrapped in textwrap.wrap(line, 100, subsequent_indent="    ")]
    figure, axes = plt.subplots(figsize=(8, 0.7 + 0.16 * len(lines)))
    axes.axis("off")
    axes.set_title("Nothing ran", fontsize=10)
    axes.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7, transform=axes.transAxes)
    return figure


def write_figures(config: dict, inputs: ReportInputs, out_dir: str | os.PathLike) -> list[Path]:
    """Write every figure of `figure_file_names(config)` into `out_dir` from the result files
    `inputs`; return their paths."""
    out_dir = Path(out_dir)
    written = []
    if figure_file_names(config) == [NOTHING_RAN]:
        return [save(nothing_ran_figure(config), out_dir / NOTHING_RAN)]
    for dataset in run_datasets(config):
        written.append(loss_figure(config, inputs, dataset, out_dir / f"loss_{dataset}.png"))
        written.append(scores_figure(config, inputs, dataset, out_dir / f"scores_{dataset}.png"))
    if measured_speed_rows(config):
        written += speed_figures(config, inputs, out_dir / "speed_throughput.png", out_dir / "speed_memory.png")
    return written
