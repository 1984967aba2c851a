"""The result files the tables and figures show, and where they came from (commit, hardware, date)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from phi3v.layout import BASE_RUN, ReportInputs, read_metrics, read_provenance, read_scores, read_speed_row


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


def read_seed_results(inputs: ReportInputs, run: dict, sources: ResultSources) -> list[RunResult]:
    """The results of every seed of a table row (`seed_runs`, see accuracy_tables.configured_runs)."""
    return [read_run_result(inputs, {**run, "run": name}, sources) for name in run.get("seed_runs") or [run["run"]]]


def read_base_result(inputs: ReportInputs, dataset: str, sources: ResultSources) -> dict:
    label = f"run {dataset}/{BASE_RUN} (the model before fine-tuning)"
    path = inputs.scores(dataset, BASE_RUN)
    scores = read_scores(path, label, ("score", "n", "majority_baseline"))
    sources.saw(path)
    return scores


def read_speed_result(inputs: ReportInputs, config_row: dict, sources: ResultSources) -> dict:
    path = inputs.speed(config_row["row"])
    data = read_speed_row(path, f"speed row {config_row['row']}")
    sources.saw(path)
    note_provenance(data, sources)
    if data.get("device") and not isinstance(data.get("hardware"), dict):
        sources.hardware.add(f"{data.get('nodes', 1) * data.get('gpus', 1)}x {data['device']}")
    return data


def skipped_lines(config: dict) -> list[str]:
    """One console line per selected run or speed row that will not run, with its reason."""
    lines = [f"skipped run {run['dataset']}/{run['run']}: {run['skip_reason']} (on_unsupported: skip)"
             for run in config["runs"] if run.get("skip_reason")]
    lines += [f"skipped speed row {row['row']}: {row['skip_reason']} (on_unsupported: skip)"
              for row in config["speed"]["rows"] if row.get("skip_reason")]
    return lines
