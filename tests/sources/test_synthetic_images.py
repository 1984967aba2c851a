"""The demo's image generators: every answer is what the pixels show, and it survives heavy downscaling."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from PIL import Image

from phi3v.data.sources import synthetic_images as syn


def colour_name(pixel) -> str:
    """The named colour nearest to an RGB pixel."""
    return min(syn.COLOURS, key=lambda name: sum((int(a) - b) ** 2 for a, b in zip(pixel, syn.COLOURS[name])))


def band_colours(page: Image.Image) -> dict[str, str]:
    """Colour of each field box, read at the left edge of its box (away from the printed value)."""
    # the page as the tiny model sees it at num_crops 1: about 43 x 56 pixels
    small = np.asarray(page.resize((43, 56), Image.BILINEAR))
    width, height = syn.FORM_SIZE
    band_top, band_height = 24, (height - 28) // len(syn.FORM_FIELDS)
    colours = {}
    for k, field in enumerate(syn.FORM_FIELDS):
        y = (band_top + k * band_height + band_height - 4) * 56 / height  # lower part of the box
        colours[field] = colour_name(small[int(y) - 1, 2])
    return colours


@pytest.mark.parametrize("seed", range(40))
def test_form_page_answer_is_the_colour_of_the_named_field(seed):
    page = syn.draw_form_page(random.Random(seed))
    assert page.image.size == syn.FORM_SIZE
    colours = band_colours(page.image)
    assert len(set(colours.values())) == 3
    if match := re.fullmatch(r"What is the colour of the (\w+) field\?", page.question):
        assert page.answers[0] == colours[match.group(1)]
    else:
        colour = re.fullmatch(r"Which field is (\w+)\?", page.question).group(1)
        assert [field for field, c in colours.items() if c == colour] == [page.answers[0]]
    assert len(page.words) == len(page.boxes) == 7 and all(0 <= v <= 1000 for box in page.boxes for v in box)


@pytest.mark.parametrize("hateful", [True, False])
def test_meme_label_follows_the_colour_of_its_shape(hateful):
    rng = random.Random(7)
    for _ in range(20):
        meme = syn.draw_meme(rng, hateful)
        small = np.asarray(meme.resize((56, 56), Image.BILINEAR))
        shape = colour_name(small[28, 28])
        assert (shape in syn.WARM_COLOURS) == hateful
    assert syn.meme_question(rng).endswith("\nAnswer yes or no.")


def statement_holds(statement: str, left: str, right: str) -> bool:
    """An independent reading of the generator's statements."""
    if match := re.fullmatch(r"The (left|right) image shows an? (\w+) shape\.", statement):
        return (left if match.group(1) == "left" else right) == match.group(2)
    if match := re.fullmatch(r"Both images show an? (\w+) shape\.", statement):
        return left == right == match.group(1)
    assert statement == "The shapes in the two images have the same colour."
    return left == right


@pytest.mark.parametrize("true", [True, False])
def test_pair_statement_has_the_requested_truth_value(true):
    rng = random.Random(11)
    kinds = set()
    for _ in range(200):
        left, right, statement = syn.pair_statement(rng, true)
        assert statement_holds(statement, left, right) == true
        kinds.add(statement.split()[1])
    assert kinds == {"left", "right", "images", "shapes"}


def test_pair_panels_show_their_colours_and_the_question_quotes_the_statement():
    rng = random.Random(3)
    for true in (True, False) * 10:
        left, right, question = syn.draw_pair(rng, true)
        statement = re.search(r'"(.+)"', question).group(1)
        seen = [colour_name(np.asarray(im.resize((28, 28), Image.BILINEAR))[14, 14]) for im in (left, right)]
        assert statement_holds(statement, *seen) == true
        assert question.endswith("Answer yes or no.")


def test_generators_are_deterministic_and_labels_balanced():
    a, b = syn.draw_form_page(random.Random(5)), syn.draw_form_page(random.Random(5))
    assert a.question == b.question and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert syn.encode_image(a.image, "PNG") == syn.encode_image(b.image, "PNG")
    labels = syn.balanced_labels(random.Random(0), 9)
    assert labels.count(True) == 4 and labels.count(False) == 5
    assert syn.balanced_labels(random.Random(0), 20) != syn.balanced_labels(random.Random(1), 20)
