"""The metrics: the recipe's ANLS (DocVQA) and exact-match accuracy, the official ANLS (the DocVQA
definition) and lmms-eval's ANLS. AUROC and bootstrap intervals: `phi3v.evaluation.statistics`.

Scores here are fractions in [0, 1]; `phi3v.evaluation.evaluate` reports them in percent.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from rapidfuzz.distance import Levenshtein

from phi3v.data.records import normalize_answer

ANLS_THRESHOLD = 0.5


def strip_answer(text: str) -> str:
    """Strip surrounding whitespace and trailing dots (`anls`'s normalisation)."""
    return text.strip().rstrip(".").strip()


def best_similarity(prediction: str, answers: Iterable[str], threshold: float = ANLS_THRESHOLD) -> float:
    """One question's ANLS on already-normalised strings: 1 - NL of the closest gold answer when
    NL < threshold, else 0. NL: the Levenshtein distance over the longer length (0 for two empty strings)."""
    distances = [Levenshtein.normalized_distance(prediction, gold) for gold in answers]
    return max((1.0 - d for d in distances if d < threshold), default=0.0)


def anls(
    prediction: str,
    answers: Sequence[str],
    case_sensitive: bool = True,
    threshold: float = ANLS_THRESHOLD,
) -> float:
    """ANLS of one prediction: the best similarity over the gold answers, 0 below the threshold.

    similarity = 1 - NL when NL < threshold, else 0, with NL the normalised Levenshtein distance, on
    prediction and gold answers stripped of whitespace and trailing dots. An empty prediction scores 0.
    Not the tables' metrics: those are `recipe_anls` (the recipe's) and `anls_official` (DocVQA's).
    """
    if isinstance(answers, str):
        answers = [answers]
    prediction = strip_answer(prediction)
    if not prediction:
        return 0.0
    golds = [strip_answer(gold) for gold in answers]
    if not case_sensitive:
        prediction, golds = prediction.lower(), [gold.lower() for gold in golds]
    return best_similarity(prediction, golds, threshold)


def recipe_anls(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS exactly as the recipe's DocVQA script scores one question: the prediction stripped of
    whitespace, then of dots at both ends (`.strip().strip('.')`); the gold answers as they are;
    case-sensitive; an empty prediction scores 0."""
    if isinstance(answers, str):
        answers = [answers]
    prediction = prediction.strip().strip(".")
    if not prediction:
        return 0.0
    return best_similarity(prediction, answers, threshold)


def mean_anls(
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    case_sensitive: bool = True,
    threshold: float = ANLS_THRESHOLD,
) -> float:
    """Mean ANLS over questions; `answers[i]` holds every gold answer of question i."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        return 0.0
    scores = [anls(p, a, case_sensitive, threshold) for p, a in zip(predictions, answers)]
    return sum(scores) / len(scores)


def accuracy(prediction: str, answer: str | Iterable[str]) -> float:
    """1.0 when the normalised prediction equals the (or any) normalised gold answer, else 0.0."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in answers))


# ---------------------------------------------------------------------------------------------
# The official ANLS and lmms-eval's


def normalize_official(text: str) -> str:
    """The DocVQA normalisation: lower-case, strip, inner whitespace collapsed to one space; nothing else."""
    return " ".join(text.lower().split())


def anls_official(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS as the DocVQA challenge defines it: on normalised strings (`normalize_official`),
    1 - NL when NL < threshold else 0, the best over the gold answers. No special case for empty text."""
    if isinstance(answers, str):
        answers = [answers]
    return best_similarity(normalize_official(prediction), map(normalize_official, answers), threshold)


def anls_lmms_eval(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """lmms-eval's `anls` (lmms_eval/api/metrics.py, 0.7): the distance between the normalised strings
    divided by the longer *unnormalised* length (of the upper-cased texts), then 1 - the smallest
    ratio, kept when it is at least the threshold (so NL = 0.5 scores 0.5, where the DocVQA
    definition gives 0)."""
    if isinstance(answers, str):
        answers = [answers]
    normalized = normalize_official(prediction)
    ratios = []
    for gold in answers:
        length = max(len(gold.upper()), len(prediction.upper()))
        distance = Levenshtein.distance(normalize_official(gold), normalized)
        ratios.append(0.0 if length == 0 else distance / length)
    score = 1.0 - min(ratios)
    return score if score >= threshold else 0.0
