"""Each score a table shows, with its uncertainty: the mean over a run's seeds, their spread, and a
percentile-bootstrap 95% interval over the evaluation examples.

The interval resamples the examples (the same draw for every seed, with a fixed seed so a table
regenerated from the same results is identical) from the per-example scores each evaluation keeps
in `scores.json` (`per_example`); with several seeds each resample's statistic is the mean over
the seeds. The spread is the sample standard deviation of the seeds' scores.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from phi3v.errors import UserError
from phi3v.evaluation.statistics import BOOTSTRAP_RESAMPLES, auroc_of_counts, bootstrap_interval, mean_of_counts
from phi3v.reporting.table_format import MISSING, format_delta, format_number

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """One score of one table row, in percent."""

    mean: float
    spread: float | None  # standard deviation over seeds; None with one seed
    interval: tuple[float, float] | None  # bootstrap interval; None without per-example scores


def _statistic(per_example: dict, key: str):
    """The bootstrap statistic of one evaluation for score `key`, or None when its examples are not kept."""
    if key == "auroc":
        if "p_yes" not in per_example or "is_yes" not in per_example:
            return None
        return auroc_of_counts(per_example["p_yes"], per_example["is_yes"])
    return mean_of_counts(per_example[key]) if key in per_example else None


def estimate(results: Sequence[dict], key: str, label: str) -> Estimate | None:
    """Score `key` ("score", "anls_official", "auroc", ...) of one row from its seeds' `scores.json`;
    None when no seed has it. `label` names the row in errors."""
    values = [result.get(key) for result in results]
    if not values or any(value is None for value in values):
        return None
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else None
    per_examples = [result.get("per_example") or {} for result in results]
    ids = [per_example.get("id") for per_example in per_examples]
    if any(other != ids[0] for other in ids[1:]):
        raise UserError(f"{label}: the seeds were evaluated on different examples (their scores.json "
                        "`per_example.id` differ) — evaluate every seed on the same split again")
    stats = [_statistic(per_example, key) for per_example in per_examples]
    interval = None
    if ids[0] and all(stat is not None for stat in stats):
        low, high = bootstrap_interval(stats, len(ids[0]), CONFIDENCE)
        interval = (100.0 * low, 100.0 * high)
    return Estimate(mean, spread, interval)


def format_estimate(value: Estimate | None, decimals: int) -> str:
    """`61.23 [51.20, 70.11]`; with several seeds `61.23 ± 1.20 [51.20, 70.11]` (mean ± spread)."""
    if value is None:
        return MISSING
    text = format_number(value.mean, decimals)
    if value.spread is not None:
        text += f" ± {format_number(value.spread, decimals)}"
    if value.interval is not None:
        low, high = value.interval
        text += f" [{format_number(low, decimals)}, {format_number(high, decimals)}]"
    return text


def format_delta_with_interval(value: Estimate, reference: str, decimals: int) -> str:
    """The score as shown minus the recipe's value, and whether the recipe's value lies inside the
    interval: `-22.42 (outside)`, `+0.50 (inside)`; the bare difference without an interval."""
    text = format_delta(value.mean, reference, decimals)
    if value.interval is None:
        return text
    low, high = value.interval
    return text + (" (inside)" if low <= float(reference) <= high else " (outside)")


UNCERTAINTY_NOTE = (
    "Scores: the mean over the run's seeds (± their standard deviation, with several seeds) and, in "
    f"brackets, a {CONFIDENCE:.0%} percentile-bootstrap interval over the evaluation examples "
    f"({BOOTSTRAP_RESAMPLES} resamples, fixed seed; with several seeds each resample averages them). Δ: the score minus the "
    "recipe's value; (inside)/(outside): whether the recipe's value lies in the interval."
)
