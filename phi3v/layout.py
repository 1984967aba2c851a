"""Every path under the results folder, and the reads of the result files.

The rules name their inputs and outputs here, the jobs write under these names, and the tables and
figures read them back through the functions below; no other module spells a results path.
`report_inputs` keys the files the tables and figures read, so the rules declare exactly what the
reporting functions are given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from phi3v.errors import UserError

# File names inside a run folder and an evaluation folder; the training and evaluation entry
# points write them into any folder they are given.
MODEL = "model"
ADAPTER = "adapter"
METRICS_FILE = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
PROVENANCE = "provenance.json"
TRACKERS_DIR = "trackers"  # experiment trackers' files in a run folder (not a Snakemake output)
PREDICTIONS = "predictions.jsonl"
SCORES = "scores.json"
LMMS_EVAL = "lmms_eval"  # lmms-eval's protocol's evaluation, inside an evaluation folder
BASE_RUN = "base"  # the evaluation name of the model before fine-tuning


@dataclass(frozen=True)
class ResultsLayout:
    """The results folder `root`; a wildcard such as `"{dataset}"` may stand for any name."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # Data
    def raw(self, dataset: str) -> Path:
        return self.root / "raw" / dataset

    def data(self, dataset: str) -> Path:
        return self.root / "data" / dataset

    def split(self, dataset: str, split: str) -> Path:
        return self.data(dataset) / f"{dataset}_{split}.jsonl"

    def stats(self, dataset: str, split: str) -> Path:
        return self.data(dataset) / f"stats_{split}.json"

    @property
    def pretrain_corpus(self) -> Path:
        return self.root / "pretrain" / "corpus"

    # Models
    @property
    def base_model(self) -> Path:
        return self.root / "base_model"

    def dataset_base_model(self, model_key: str) -> Path:
        """A base model some dataset names (`datasets.<name>.model`) other than the preset's."""
        return self.root / "base_models" / model_key

    @property
    def model_config(self) -> Path:
        """The model's config and tokenizer without weights (speed rows with random weights)."""
        return self.root / "model_config"

    # Training runs
    def run_dir(self, dataset: str, run: str) -> Path:
        return self.root / "runs" / dataset / run

    def model(self, dataset: str, run: str) -> Path:
        return self.run_dir(dataset, run) / MODEL

    def adapter(self, dataset: str, run: str) -> Path:
        return self.run_dir(dataset, run) / ADAPTER

    def metrics(self, dataset: str, run: str) -> Path:
        return self.run_dir(dataset, run) / METRICS_FILE

    def train_log(self, dataset: str, run: str) -> Path:
        return self.run_dir(dataset, run) / TRAIN_LOG

    def provenance(self, dataset: str, run: str) -> Path:
        return self.run_dir(dataset, run) / PROVENANCE

    def checkpoints(self, dataset: str, run: str) -> Path:
        """Resumable state; not a workflow output (Snakemake would delete it before a rerun)."""
        return self.root / "checkpoints" / dataset / run

    # Evaluation and speed
    def eval_dir(self, dataset: str, run: str) -> Path:
        return self.root / "eval" / dataset / run

    def predictions(self, dataset: str, run: str) -> Path:
        return self.eval_dir(dataset, run) / PREDICTIONS

    def scores(self, dataset: str, run: str) -> Path:
        return self.eval_dir(dataset, run) / SCORES

    def lmms_eval_dir(self, dataset: str, run: str) -> Path:
        """The same model answering lmms-eval's protocol (on its own split), beside the run's scores."""
        return self.eval_dir(dataset, run) / LMMS_EVAL

    def lmms_eval_predictions(self, dataset: str, run: str) -> Path:
        return self.lmms_eval_dir(dataset, run) / PREDICTIONS

    def lmms_eval_scores(self, dataset: str, run: str) -> Path:
        return self.lmms_eval_dir(dataset, run) / SCORES

    def speed(self, row: str) -> Path:
        return self.root / "speed" / f"{row}.json"

    # Reports
    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def readme(self) -> Path:
        return self.root / "README.md"

    # What every job leaves beside its outputs
    def log(self, *names: str) -> Path:
        """`log("train", "{dataset}", "{run}")` -> logs/train/{dataset}/{run}.log"""
        return self.root.joinpath("logs", *names[:-1], f"{names[-1]}.log")

    def benchmark(self, *names: str) -> Path:
        """`benchmark("train", "{dataset}", "{run}")` -> benchmarks/train/{dataset}/{run}.tsv"""
        return self.root.joinpath("benchmarks", *names[:-1], f"{names[-1]}.tsv")


# ---------------------------------------------------------------------------------------------
# The files the tables and figures read, keyed by what they hold


def run_key(dataset: str, run: str, kind: str) -> str:
    """`docvqa/full-bf16-sdpa/scores`: the input name of one result file of a run."""
    return f"{dataset}/{run}/{kind}"


def speed_key(row: str) -> str:
    return f"speed/{row}"


def report_inputs(layout: ResultsLayout, evaluations: Iterable[tuple[str, str]], trained: Iterable[tuple[str, str]],
                  speed_rows: Iterable[str], lmms_eval_evaluations: Iterable[tuple[str, str]] = ()) -> dict[str, Path]:
    """Input name -> path of every result the reports read: the scores of each evaluation (and of its
    lmms-eval protocol, when run), the metrics, training log and provenance of each trained run, and each speed row."""
    files = {run_key(dataset, run, "scores"): layout.scores(dataset, run) for dataset, run in evaluations}
    files.update({run_key(dataset, run, LMMS_EVAL): layout.lmms_eval_scores(dataset, run)
                  for dataset, run in lmms_eval_evaluations})
    for dataset, run in trained:
        files[run_key(dataset, run, "metrics")] = layout.metrics(dataset, run)
        files[run_key(dataset, run, "train_log")] = layout.train_log(dataset, run)
        files[run_key(dataset, run, "provenance")] = layout.provenance(dataset, run)
    files.update({speed_key(row): layout.speed(row) for row in speed_rows})
    return files


@dataclass(frozen=True)
class ReportInputs:
    """The result files a report was given (Snakemake's named inputs), looked up by run or row."""

    files: Mapping[str, str | os.PathLike]

    def _path(self, key: str) -> Path:
        if key not in self.files:
            raise UserError(f"no input {key!r} was given to the report: declare it in the rule's inputs "
                            "(phi3v.layout.report_inputs)")
        return Path(self.files[key])

    def scores(self, dataset: str, run: str) -> Path:
        return self._path(run_key(dataset, run, "scores"))

    def lmms_eval_scores(self, dataset: str, run: str) -> Path:
        return self._path(run_key(dataset, run, LMMS_EVAL))

    def metrics(self, dataset: str, run: str) -> Path:
        return self._path(run_key(dataset, run, "metrics"))

    def train_log(self, dataset: str, run: str) -> Path:
        return self._path(run_key(dataset, run, "train_log"))

    def provenance(self, dataset: str, run: str) -> Path:
        return self._path(run_key(dataset, run, "provenance"))

    def speed(self, row: str) -> Path:
        return self._path(speed_key(row))


# ---------------------------------------------------------------------------------------------
# Reading result files


def read_result(path: str | os.PathLike, label: str, required: Sequence[str] = ()) -> dict:
    """One result JSON object; a missing, unreadable or incomplete file names `label`, the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"results of {label}: {path} is missing — run the workflow to produce it "
            f"(snakemake {path}), or mark the run with a skip_reason in the config"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"results of {label}: {path} is not valid JSON ({error}) — delete it and rerun "
            "the step that writes it"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"results of {label}: {path} holds a {type(data).__name__}, not an object")
    absent = [key for key in required if data.get(key) is None]
    if absent:
        raise UserError(
            f"results of {label}: {path} lacks {', '.join(absent)} — delete it and rerun the "
            "step that writes it"
        )
    return data


def read_scores(path: str | os.PathLike, label: str, required: Sequence[str] = ("score", "n")) -> dict:
    """An evaluation's `scores.json`."""
    return read_result(path, label, required)


def read_metrics(path: str | os.PathLike, label: str) -> dict:
    """A training run's `metrics.json`."""
    return read_result(path, label, ("final_loss",))


def read_speed_row(path: str | os.PathLike, label: str) -> dict:
    """One speed row's measurement."""
    return read_result(path, label, ("img_per_s",))


def read_provenance(path: str | os.PathLike) -> dict | None:
    """A run's provenance record, or None when absent or unreadable (it is informative only)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_train_log(path: str | os.PathLike, label: str) -> tuple[list[int], list[float]]:
    """(steps, losses) of a `train_log.jsonl`; a bad line is named by file and line number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"results of {label}: {path} is missing — run the workflow to produce it "
                        f"(snakemake {path})")
    steps, losses = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            step, loss = int(entry["step"]), float(entry["loss"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise UserError(f"{path}:{number}: not a training log line with step and loss ({error}) — "
                            "delete the run's folder and train it again") from None
        steps.append(step)
        losses.append(loss)
    if not steps:
        raise UserError(f"results of {label}: {path} has no logged steps — train the run again")
    return steps, losses
