"""Image generators for the demo's stand-ins of DocVQA, Hateful Memes and NLVR2.

Each generator draws one example of the real task's kind (a form page and a question with a short
answer; a meme and a yes/no question; two pictures and a statement) from a `random.Random`. The
answer depends only on coarse attributes (the colour, position and size of large regions), never
on reading small text, so a tiny vision tower that sees a few 56-pixel crops can learn the tasks.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

# Saturated colours that stay distinct after downscaling to a few patches.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (130, 50, 170),
    "orange": (240, 130, 20),
}
WARM_COLOURS = ("red", "orange", "yellow")
COOL_COLOURS = ("green", "blue", "purple")

# A form's fields, always in this order from top to bottom: the field name fixes its position.
FORM_FIELDS = ("Date", "Amount", "Total")
FORM_SIZE = (112, 144)  # (width, height): a portrait page, 4x4 crops at num_crops 16 (2509 image tokens)
# Every sixth page is narrower: 4x3 crops at num_crops 16 (1933 image tokens), so the pages average
# 2413 image tokens, which with the prompt's text is the recipe's DocVQA mean of 2443.23 tokens a
# sample (its speed tables' input); at the demo's num_crops 2 both shapes give the same crops.
NARROW_FORM_SIZE, NARROW_FORM_EVERY = (100, 150), 6
FORM_BAND_TOP, FORM_BAND_HEIGHT = 24, 38  # the fields' bands below the title
FORM_BLANK = (200, 200, 200)  # the boxes of the fields the question is not about
MEME_SIZE = (128, 128)
PANEL_SIZE = (112, 112)
PAIR_COLOURS = ("red", "green", "blue")  # few colours: "same colour" is a coarse comparison

_CAPTION_WORDS = (
    "when", "the", "monday", "coffee", "cat", "finally", "weekend", "nobody", "me", "again",
    "plans", "homework", "pizza", "dog", "friday", "meeting", "sleep", "code", "works", "why",
)


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """Encode a PIL image as PNG or JPEG bytes (what the hub's image structs hold)."""
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, format="JPEG", quality=92)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pastel(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(200, 250) for _ in range(3))


# ---------------------------------------------------------------------------------------------
# DocVQA: a form page with one coloured field
# ---------------------------------------------------------------------------------------------


@dataclass
class FormPage:
    image: Image.Image
    question: str
    answers: list[str]
    words: list[str]
    boxes: list[list[float]]  # one [x0, y0, x1, y1] per word, normalised to 0-1000 like the hub's


def form_page_size(index: int) -> tuple[int, int]:
    """(width, height) of the `index`-th page of a split (see NARROW_FORM_EVERY)."""
    return NARROW_FORM_SIZE if index % NARROW_FORM_EVERY == NARROW_FORM_EVERY - 1 else FORM_SIZE


def draw_form_page(rng: random.Random, size: tuple[int, int] = FORM_SIZE) -> FormPage:
    """A page with a title and three labelled field boxes, one of them filled with a colour.

    Questions: "What is the colour of the <field> field?" (answer: the colour) or "Which field is
    <colour>?" (answer: the field's name, which its position gives away); the other boxes are grey.
    """
    width, height = size
    page = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(page)
    words, boxes = [], []

    def printed(xy: tuple[int, int], text: str, fill=(0, 0, 0)) -> None:
        draw.text(xy, text, fill=fill)
        x0, y0, x1, y1 = draw.textbbox(xy, text)
        words.append(text)
        boxes.append([round(1000 * x0 / width), round(1000 * y0 / height),
                      round(1000 * x1 / width), round(1000 * y1 / height)])

    printed((6, 4), rng.choice(("INVOICE", "RECEIPT", "ORDER", "REPORT")))
    field, colour = rng.choice(FORM_FIELDS), rng.choice(sorted(COLOURS))
    for k, name in enumerate(FORM_FIELDS):
        top = FORM_BAND_TOP + k * FORM_BAND_HEIGHT
        printed((6, top), name)
        # The box covers most of its band: its colour is visible at any resolution.
        fill = COLOURS[colour] if name == field else FORM_BLANK
        draw.rectangle((4, top + 12, width - 5, top + FORM_BAND_HEIGHT - 4), fill=fill)
        printed((10, top + 16), f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}", fill=(255, 255, 255))

    if rng.random() < 0.6:
        question, answers = f"What is the colour of the {field} field?", [colour, colour.capitalize()]
    else:
        question, answers = f"Which field is {colour}?", [field, field.lower()]
    return FormPage(page, question, answers, words, boxes)


# ---------------------------------------------------------------------------------------------
# Hateful Memes: a picture with a caption bar
# ---------------------------------------------------------------------------------------------

MEME_QUESTIONS = (
    "Is this meme hateful?",
    "Does this meme contain hateful content?",
    "Would this meme be considered hateful?",
)


def draw_meme(rng: random.Random, hateful: bool) -> Image.Image:
    """A meme: a large shape on a pastel background and a caption bar at the top or the bottom.

    Rule of the stand-in task: the meme counts as hateful when its shape has a warm colour; the
    caption's words and position are noise the model has to ignore.
    """
    width, height = MEME_SIZE
    meme = Image.new("RGB", MEME_SIZE, _pastel(rng))
    draw = ImageDraw.Draw(meme)
    colour = rng.choice(WARM_COLOURS if hateful else COOL_COLOURS)
    half_w, half_h = rng.randint(30, 44), rng.randint(26, 36)
    cx, cy = width // 2 + rng.randint(-10, 10), height // 2 + rng.randint(-6, 6)
    box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    if rng.random() < 0.5:
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.rectangle(box, fill=COLOURS[colour])

    bar_height = 22
    bar_top = 0 if rng.random() < 0.5 else height - bar_height
    bar_colour, text_colour = rng.choice((((255, 255, 255), (0, 0, 0)), ((0, 0, 0), (255, 255, 255))))
    draw.rectangle((0, bar_top, width - 1, bar_top + bar_height - 1), fill=bar_colour)
    caption = " ".join(rng.choice(_CAPTION_WORDS) for _ in range(rng.randint(2, 4)))
    draw.text((4, bar_top + 5), caption, fill=text_colour)
    return meme


def meme_question(rng: random.Random) -> str:
    return rng.choice(MEME_QUESTIONS) + "\nAnswer yes or no."


# ---------------------------------------------------------------------------------------------
# NLVR2: two pictures and a statement about them
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One picture of a pair: a single circle or square, large or small, of one colour."""

    colour: str
    large: bool


def draw_panel(rng: random.Random, panel: Panel) -> Image.Image:
    width, height = PANEL_SIZE
    image = Image.new("RGB", PANEL_SIZE, tuple(rng.randint(215, 245) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    # Large and small are far apart (about 4x the area), so size reads off a few patches.
    half = rng.randint(36, 44) if panel.large else rng.randint(16, 22)
    cx, cy = width // 2 + rng.randint(-10, 10), height // 2 + rng.randint(-10, 10)
    box = (cx - half, cy - half, cx + half, cy + half)
    if rng.random() < 0.5:
        draw.ellipse(box, fill=COLOURS[panel.colour])
    else:
        draw.rectangle(box, fill=COLOURS[panel.colour])
    return image


PAIR_STATEMENTS = {
    "same_colour": "The shapes in the two images have the same colour.",
    "left_larger": "The shape in the left image is larger than the shape in the right image.",
    "both_large": "Both images show a large shape.",
}


def pair_holds(kind: str, left: Panel, right: Panel) -> bool:
    """Whether the statement of `kind` is true for the pair."""
    if kind == "same_colour":
        return left.colour == right.colour
    if kind == "left_larger":
        return left.large and not right.large
    return left.large and right.large


def pair_statement(rng: random.Random, true: bool) -> tuple[Panel, Panel, str]:
    """(left, right, statement) with a statement about colours or sizes that is `true` for the pair.

    The pair is drawn at random until the statement's truth value is the requested one (a few draws:
    each kind holds for a quarter to a third of random pairs).
    """
    kind = rng.choice(sorted(PAIR_STATEMENTS))
    while True:
        left, right = (Panel(rng.choice(PAIR_COLOURS), rng.random() < 0.5) for _ in range(2))
        if pair_holds(kind, left, right) == true:
            return left, right, PAIR_STATEMENTS[kind]


def pair_question(statement: str) -> str:
    return (
        "Image 1 is on the left, image 2 on the right. "
        f'Is the statement "{statement}" true? Answer yes or no.'
    )


def draw_pair(rng: random.Random, true: bool) -> tuple[Image.Image, Image.Image, str]:
    """Two pictures and the question about a statement whose truth value is `true`."""
    left, right, statement = pair_statement(rng, true)
    return draw_panel(rng, left), draw_panel(rng, right), pair_question(statement)


def balanced_labels(rng: random.Random, n: int) -> list[bool]:
    """n yes/no labels, half of each (n odd: one more False), in random order."""
    labels = [i % 2 == 1 for i in range(n)]
    rng.shuffle(labels)
    return labels
