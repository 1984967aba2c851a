"""Scoring answers: each prediction's scores (`predictions.jsonl`), the split's means and per-example
lists (`scores.json`), and the rows of several processes merged."""

from __future__ import annotations

from typing import Sequence

from phi3v.data.records import normalize_answer
from phi3v.evaluation import statistics
from phi3v.evaluation.metrics import accuracy, anls_lmms_eval, anls_official, recipe_anls

# The metric a dataset's table reports (`score_prediction` computes it)
METRIC_NAMES = ("anls", "accuracy")


def score_prediction(prediction: str, answers: Sequence[str], metric: str) -> float:
    """The table's metric for one sample, in [0, 1]: the recipe's ANLS for `anls`, exact match otherwise."""
    if metric == "anls":
        return recipe_anls(prediction, answers)
    return accuracy(prediction, answers)


def percent(values: Sequence[float]) -> float:
    return round(100.0 * sum(values) / len(values), 4) if values else 0.0


def is_yes(answers: Sequence[str]) -> bool:
    """The positive class of a yes/no task (Hateful Memes: hateful): the first gold answer is "yes"."""
    return normalize_answer(answers[0]) == "yes"


# Values of a predictions row that `scores.json` keeps under `per_example` (those the rows have),
# for the tables' bootstrap intervals.
PER_EXAMPLE = ("id", "score", "anls_official", "p_yes")


def summarize(
    predictions: Sequence[dict], *, metric: str, majority: str | None, dataset: str, run: str, split: str,
    protocol: str = "recipe",
) -> dict:
    """`scores.json` from scored predictions; the majority baseline (when given) goes through the same scoring.
    Under the lmms_eval protocol `score` is lmms-eval's ANLS (also as `anls_lmms_eval`)."""
    answers = [p["answers"] for p in predictions]
    scores = {
        "dataset": dataset,
        "run": run,
        "split": split,
        "protocol": protocol,
        "metric": metric,
        "score": percent([p["score"] for p in predictions]),
    }
    if protocol == "lmms_eval":
        scores["anls_lmms_eval"] = scores["score"]
    elif metric == "anls":
        scores["anls_recipe"] = scores["score"]
        scores["anls_official"] = percent([p["anls_official"] for p in predictions])
    if predictions and "p_yes" in predictions[0]:
        value = statistics.auroc([p["p_yes"] for p in predictions], [is_yes(a) for a in answers])
        scores["auroc"] = None if value is None else round(100.0 * value, 4)
    scores["accuracy"] = percent([accuracy(p["prediction"], a) for p, a in zip(predictions, answers)])
    if majority is not None:
        majority_scores = [round(score_prediction(majority, a, metric), 6) for a in answers]
        scores["majority_baseline"] = percent(majority_scores)
        scores["majority_answer"] = majority
    scores["n"] = len(predictions)
    scores["per_example"] = {key: [p[key] for p in predictions] for key in PER_EXAMPLE
                             if predictions and key in predictions[0]}
    if majority is not None:
        scores["per_example"]["majority_baseline"] = majority_scores
    if "p_yes" in scores["per_example"]:
        scores["per_example"]["is_yes"] = [is_yes(a) for a in answers]
    return scores


def summary(scores: dict) -> dict:
    """`scores.json` without the per-example lists, for printing."""
    return {key: value for key, value in scores.items() if key != "per_example"}


def scored_predictions(ids: Sequence[str], predictions: Sequence[str], answers: Sequence[Sequence[str]],
                       metric: str, yes_probabilities: Sequence[float] | None = None,
                       protocol: str = "recipe") -> list[dict]:
    """The rows of `predictions.jsonl`, sorted by id: the recipe's score, the official ANLS
    (anls) and the probability of "yes" (when given); under the lmms_eval protocol lmms-eval's ANLS."""
    rows = []
    for index, (i, p, a) in enumerate(zip(ids, predictions, answers)):
        if protocol == "lmms_eval":
            rows.append({"id": i, "prediction": p, "answers": list(a), "score": round(anls_lmms_eval(p, a), 6)})
            continue
        row = {"id": i, "prediction": p, "answers": list(a), "score": round(score_prediction(p, a, metric), 6)}
        if metric == "anls":
            row["anls_official"] = round(anls_official(p, a), 6)
        if yes_probabilities is not None:
            row["p_yes"] = round(float(yes_probabilities[index]), 6)
        rows.append(row)
    return sorted(rows, key=lambda row: row["id"])


def merge_answers(rows: Sequence[dict]) -> list[dict]:
    """Every process's rows sorted by id; a repeated id means a sample was answered twice."""
    rows = sorted(rows, key=lambda row: row["id"])
    for before, after in zip(rows, rows[1:]):
        if before["id"] == after["id"]:
            raise ValueError(f"sample {before['id']!r} was answered twice")
    return rows
