"""ANLS and accuracy on hand-computed cases."""

import pytest

from phi3v.evaluation.metrics import accuracy, anls, mean_anls, normalize_answer, normalized_levenshtein


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
    assert normalized_levenshtein("ß", "ss") == 1.0


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


def test_recipe_anls_strips_the_prediction_only_and_keeps_case():
    """The recipe's DocVQA script: prediction `.strip().strip('.')`, gold answers as they are."""
    from phi3v.evaluation.metrics import recipe_anls

    assert recipe_anls(" .5 pm. ", ["5 pm"]) == 1.0  # dots stripped at both ends of the prediction
    assert recipe_anls("5 pm", ["5 pm."]) == pytest.approx(1 - 1 / 5)  # the gold's dot stays
    assert recipe_anls("5 pm", [" 5 pm"]) == pytest.approx(1 - 1 / 5)  # so does its whitespace
    assert recipe_anls("Paris", ["paris"]) == pytest.approx(1 - 1 / 5)  # case-sensitive
    assert recipe_anls(" . ", ["x"]) == 0.0 and recipe_anls("abcd", ["abxy"]) == 0.0
