"""The demo's image generators: every answer is what the pixels show, and it survives heavy downscaling."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from PIL import Image

from phi3v.data.sources import synthetic_images as syn


def colour_name(pixel) -> str:
    """The named colour (or "blank", the grey of an empty field) nearest to an RGB pixel."""
    palette = dict(syn.COLOURS, blank=syn.FORM_BLANK)
    return min(palette, key=lambda name: sum((int(a) - b) ** 2 for a, b in zip(pixel, palette[name])))


def field_colours(page: Image.Image) -> dict[str, str]:
    """Colour of each field box, read in the page as the tiny model sees it at num_crops 1 (43 x 56)."""
    small = np.asarray(page.resize((43, 56), Image.BILINEAR))
    height = syn.FORM_SIZE[1]
    colours = {}
    for k, field in enumerate(syn.FORM_FIELDS):
        y = (syn.FORM_BAND_TOP + (k + 1) * syn.FORM_BAND_HEIGHT - 6) * 56 / height  # below the printed value
        colours[field] = colour_name(small[int(y), 3])
    return colours


@pytest.mark.parametrize("seed", range(40))
def test_form_page_answer_is_what_the_coloured_field_shows(seed):
    page = syn.draw_form_page(random.Random(seed))
    assert page.image.size == syn.FORM_SIZE
    colours = field_colours(page.image)
    [(field, colour)] = [(f, c) for f, c in colours.items() if c != "blank"]
    if match := re.fullmatch(r"What is the colour of the (\w+) field\?", page.question):
        assert match.group(1) == field and page.answers == [colour, colour.capitalize()]
    else:
        assert page.question == f"Which field is {colour}?" and page.answers == [field, field.lower()]
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


def read_panel(image: Image.Image) -> syn.Panel:
    """Colour and size of a panel's shape, measured from its pixels after downscaling to 28 x 28."""
    small = np.asarray(image.resize((28, 28), Image.BILINEAR)).astype(int)
    background = small[0, 0]
    shape = np.abs(small - background).sum(-1) > 120
    ys, xs = np.nonzero(shape)
    centre = small[int(ys.mean()), int(xs.mean())]
    return syn.Panel(colour_name(centre), bool(shape.sum() > 28 * 28 * 0.2))


@pytest.mark.parametrize("true", [True, False])
def test_pair_statement_has_the_requested_truth_value_in_the_pixels(true):
    rng = random.Random(11)
    kinds = set()
    for _ in range(60):
        left, right, question = syn.draw_pair(rng, true)
        statement = re.search(r'"(.+)"', question).group(1)
        [kind] = [k for k, text in syn.PAIR_STATEMENTS.items() if text == statement]
        kinds.add(kind)
        assert syn.pair_holds(kind, read_panel(left), read_panel(right)) == true
        assert question.endswith("Answer yes or no.")
    assert kinds == set(syn.PAIR_STATEMENTS)


def test_generators_are_deterministic_and_labels_balanced():
    a, b = syn.draw_form_page(random.Random(5)), syn.draw_form_page(random.Random(5))
    assert a.question == b.question and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert syn.encode_image(a.image, "PNG") == syn.encode_image(b.image, "PNG")
    labels = syn.balanced_labels(random.Random(0), 9)
    assert labels.count(True) == 4 and labels.count(False) == 5
    assert syn.balanced_labels(random.Random(0), 20) != syn.balanced_labels(random.Random(1), 20)


def test_form_pages_average_the_recipes_docvqa_image_tokens():
    """At num_crops 16 (336-pixel crops, 24x24 patches merged 2x2 -> 144 a crop) five pages in six are
    4x4 crops (2509 tokens) and one 4x3 (1933): 2413 image tokens on average, the recipe's 2443.23
    tokens a sample less its ~30 text tokens. At the demo's num_crops 2 both shapes give the same crops."""
    from phi3v.image_processing_phi3v import Phi3VImageProcessor

    processor = Phi3VImageProcessor(crop_size=336, num_crops=16)
    sizes = [syn.form_page_size(i) for i in range(syn.NARROW_FORM_EVERY)]
    tokens = [processor.num_image_tokens(height, width) for width, height in sizes]
    assert sorted(set(tokens)) == [1933, 2509]
    assert sum(tokens) / len(tokens) == pytest.approx(2413, abs=1)
    assert 2443.23 - sum(tokens) / len(tokens) == pytest.approx(30, abs=5)  # the prompt's text tokens
    demo = {processor.hd_size(height, width, num_crops=2) for width, height in sizes}
    assert len(demo) == 1
