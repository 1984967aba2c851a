"""ANLS (the recipe's, the official, lmms-eval's), accuracy, AUROC and bootstrap intervals on
hand-computed cases."""

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from phi3v.evaluation.metrics import (
    accuracy,
    anls,
    recipe_anls,
    anls_lmms_eval,
    anls_official,
    mean_anls,
    normalize_answer,
    normalize_official,
)
from phi3v.evaluation.statistics import auroc, auroc_of_counts, bootstrap_interval, mean_of_counts, resample_counts


def test_empty_prediction_scores_zero():
    assert anls("", ["abc"]) == 0.0
    assert anls("  . ", ["abc"]) == 0.0
    assert anls("", [""]) == 0.0


def test_exact_match_scores_one():
    assert anls("Paris", ["Paris"]) == 1.0


def test_best_over_several_gold_answers():
    # "abc" vs "abd": distance 1 over length 3.
    assert anls("abc", ["xyz", "abd"]) == pytest.approx(2 / 3)
    assert anls("abc", ["abd", "abc"]) == 1.0


def test_threshold_edge_both_sides():
    # distance 2 over length 4 = 0.5 exactly: not below the threshold, so 0.
    assert anls("abcd", ["abxy"]) == 0.0
    # distance 3 over length 7 = 0.43 < 0.5: 1 - 3/7.
    assert anls("abcdefg", ["abcdxyz"]) == pytest.approx(4 / 7)
    # a looser threshold admits the 0.5 case.
    assert anls("abcd", ["abxy"], threshold=0.6) == pytest.approx(0.5)


def test_case_recipe_versus_official():
    assert anls("Paris", ["paris"]) == pytest.approx(0.8)  # recipe: case-sensitive
    assert anls("Paris", ["paris"], case_sensitive=False) == 1.0


def test_whitespace_and_trailing_dots_are_stripped():
    assert anls("  Paris.. ", ["Paris"]) == 1.0
    assert anls("Paris", ["Paris."]) == 1.0
    assert anls("Paris", [" Paris "]) == 1.0


def test_unicode_counts_characters_not_bytes():
    assert anls("café", ["cafe"]) == pytest.approx(0.75)
    assert anls("東京", ["東京都"]) == pytest.approx(2 / 3)
    assert anls("ÜBER", ["über"], case_sensitive=False) == 1.0
    assert Levenshtein.normalized_distance("ß", "ss") == 1.0  # the distance ANLS uses


def test_single_gold_string_is_accepted():
    assert anls("abc", "abc") == 1.0


def test_mean_anls():
    assert mean_anls(["abc", "", "Paris"], [["abd"], ["x"], ["Paris"]]) == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert mean_anls([], []) == 0.0
    with pytest.raises(ValueError):
        mean_anls(["a"], [])


def test_normalize_answer():
    assert normalize_answer("  Yes. ") == "yes"
    assert normalize_answer("..No") == "no"
    assert normalize_answer("BabyCrawling") == "babycrawling"


def test_accuracy():
    assert accuracy(" Yes.", "yes") == 1.0
    assert accuracy("yes", "no") == 0.0
    assert accuracy("", "yes") == 0.0
    assert accuracy("no", ["yes", "No."]) == 1.0
    assert accuracy("Basketball", "BasketballDunk") == 0.0
    assert accuracy("ÉTÉ", "été") == 1.0


# ---------------------------------------------------------------------------------------------
# The official ANLS (DocVQA): lower-case, strip, collapse inner whitespace; nothing else


def test_official_normalisation_is_case_strip_and_whitespace_only():
    assert normalize_official("  The\tTotal \n  Amount.  ") == "the total amount."
    assert normalize_official("U.S.A.") == "u.s.a."  # punctuation stays


def test_official_anls_worked_by_hand():
    # "Paris" vs "paris": equal after lower-casing -> NL 0 -> 1.
    assert anls_official("Paris", ["paris"]) == 1.0
    # "ann  lee" vs "Ann Lee": whitespace collapsed -> equal -> 1.
    assert anls_official("ann  lee", ["Ann Lee"]) == 1.0
    # "42." vs "42": the dot is not stripped: 1 deletion over 3 characters -> 1 - 1/3.
    assert anls_official("42.", ["42"]) == pytest.approx(2 / 3)
    # ".5 mg" vs "0.5 mg": 1 insertion over 6 -> 5/6; the leading dot is kept.
    assert anls_official(".5 mg", ["0.5 mg"]) == pytest.approx(5 / 6)
    # "abcd" vs "ABXY": lower-cased "abxy", 2 substitutions over 4 = 0.5, not < 0.5 -> 0.
    assert anls_official("abcd", ["ABXY"]) == 0.0
    # "abcdefg" vs "abcdxyz": 3 over 7 = 0.43 < 0.5 -> 4/7.
    assert anls_official("abcdefg", ["abcdxyz"]) == pytest.approx(4 / 7)
    # best over gold answers: "may 3" vs ["May 3rd", "3 May"]: 2 insertions over 7 -> 5/7; vs "3 may" 4 over 5 -> 0.
    assert anls_official("may 3", ["May 3rd", "3 May"]) == pytest.approx(5 / 7)
    # an empty prediction: NL = 1 against any non-empty answer -> 0.
    assert anls_official("", ["x"]) == 0.0


def test_official_anls_differs_from_the_recipe_where_the_definitions_differ():
    assert recipe_anls("Paris", ["paris"]) == pytest.approx(0.8)  # recipe: case-sensitive, 1 edit over 5
    assert anls_official("Paris", ["paris"]) == 1.0
    assert recipe_anls("Paris.", ["Paris"]) == 1.0  # recipe: the prediction's dots stripped
    assert anls_official("Paris.", ["Paris"]) == pytest.approx(5 / 6)


def test_lmms_eval_anls_divides_by_the_unnormalised_length_and_keeps_the_threshold_value():
    # "  Paris " vs "paris": normalised equal -> distance 0 -> 1.
    assert anls_lmms_eval("  Paris ", ["paris"]) == 1.0
    # "ab  c" vs "abd": normalised "ab c" vs "abd": 2 edits; raw lengths 5 and 3 -> 1 - 2/5 = 0.6
    # (the official ANLS divides by 4: 1 - 2/4 = 0.5, not < 0.5 -> 0).
    assert anls_lmms_eval("ab  c", ["abd"]) == pytest.approx(0.6)
    assert anls_official("ab  c", ["abd"]) == 0.0
    # NL exactly 0.5: lmms-eval keeps 1 - 0.5 (>= threshold), the DocVQA definition gives 0.
    assert anls_lmms_eval("abcd", ["abxy"]) == 0.5
    assert anls_official("abcd", ["abxy"]) == 0.0
    # best over answers, below the threshold -> 0.
    assert anls_lmms_eval("xyz", ["abc", "abz"]) == 0.0  # 2 edits over 3 -> 1/3 < 0.5
    assert anls_lmms_eval("", [""]) == 1.0


# ---------------------------------------------------------------------------------------------
# AUROC and bootstrap intervals


def test_auroc_worked_by_hand_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1, 0.1
    # pairs: 0.8 beats all 3 (3); 0.4 ties 0.4 (0.5), beats 0.1 twice (2) -> 5.5 / 6
    assert auroc([0.8, 0.4, 0.4, 0.1, 0.1], [True, True, False, False, False]) == pytest.approx(5.5 / 6)
    assert auroc([0.3, 0.3, 0.3], [True, False, True]) == 0.5  # all tied: chance
    assert auroc([0.9, 0.1], [False, True]) == 0.0  # perfectly wrong
    assert auroc([0.9, 0.1], [True, True]) is None  # one class: undefined


def test_auroc_equals_the_rank_sum_statistic():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.4
    # Mann-Whitney: (sum of the positives' mid-ranks - P(P+1)/2) / (P N)
    ranks = np.array([(scores < s).sum() + ((scores == s).sum() + 1) / 2 for s in scores])
    positives, negatives = labels.sum(), (~labels).sum()
    expected = (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    assert auroc(scores, labels) == pytest.approx(expected)


def test_resample_statistics_match_a_direct_computation():
    values = np.array([1.0, 0.0, 0.5, 1.0])
    counts = np.array([[2, 0, 1, 1], [0, 0, 0, 4]])
    assert mean_of_counts(values)(counts) == pytest.approx([(2 + 0.5 + 1) / 4, 1.0])
    scores, labels = [0.9, 0.2, 0.6, 0.4], [True, False, True, False]
    # resample 1: positives 0.9 (x2), 0.6; negatives 0.4: all 3 pairs won -> 1.0
    # resample 2: only a positive drawn -> undefined (nan)
    resampled = auroc_of_counts(scores, labels)(np.array([[2, 0, 1, 1], [0, 0, 4, 0]]))
    assert resampled[0] == 1.0 and np.isnan(resampled[1])


def test_bootstrap_interval_is_reproducible_and_covers_the_mean():
    values = [1.0] * 30 + [0.0] * 20  # accuracy 0.6, n 50
    interval = bootstrap_interval([mean_of_counts(values)], len(values))
    assert interval == bootstrap_interval([mean_of_counts(values)], len(values))  # fixed seed
    low, high = interval
    # normal approximation: 0.6 +- 1.96 sqrt(0.6 * 0.4 / 50) = 0.6 +- 0.136
    assert low == pytest.approx(0.464, abs=0.02) and high == pytest.approx(0.736, abs=0.02)
    assert bootstrap_interval([mean_of_counts([1.0] * 10)], 10) == (1.0, 1.0)
    assert bootstrap_interval([], 0) is None


def test_bootstrap_over_seeds_averages_each_resample():
    # two seeds scored on the same examples: the interval is that of the per-example mean
    first, second = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]
    both = bootstrap_interval([mean_of_counts(first), mean_of_counts(second)], 4)
    assert both == bootstrap_interval([mean_of_counts([0.5, 0.0, 1.0, 1.0])], 4)
    counts = resample_counts(4)
    assert counts.shape[1] == 4 and (counts.sum(axis=1) == 4).all()
def test_recipe_anls_strips_the_prediction_only_and_keeps_case():
    """The recipe's DocVQA script: prediction `.strip().strip('.')`, gold answers as they are."""
    assert recipe_anls(" .5 pm. ", ["5 pm"]) == 1.0  # dots stripped at both ends of the prediction
    assert recipe_anls("5 pm", ["5 pm."]) == pytest.approx(1 - 1 / 5)  # the gold's dot stays
    assert recipe_anls("5 pm", [" 5 pm"]) == pytest.approx(1 - 1 / 5)  # so does its whitespace
    assert recipe_anls("Paris", ["paris"]) == pytest.approx(1 - 1 / 5)  # case-sensitive
    assert recipe_anls(" . ", ["x"]) == 0.0 and recipe_anls("abcd", ["abxy"]) == 0.0
