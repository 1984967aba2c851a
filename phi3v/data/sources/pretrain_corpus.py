"""The demo's pre-training corpus: captioned pictures of colours, shapes, positions, sizes and motion.

It teaches the tiny base model's vision tower and projector the visual vocabulary of the demo tasks
(single pictures, pairs of pictures, frame strips of a moving block) before fine-tuning, while holding
none of the tasks' prompts or answers, so the base model's scores before fine-tuning stay a real baseline.
Written in the recipe's format: `pretrain_train.jsonl`, `pretrain_val.jsonl` and `images/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from phi3v.data.sources.common import conversation, record_id, write_jsonl
from phi3v.data.sources.synthetic_video import BLOCK_COLOURS, CLIP_LENGTHS, DIRECTIONS, moving_block_frames
from phi3v.data.sources.ucf101 import frame_indices
from phi3v.errors import UserError
from phi3v.files import atomic_output_dir

NAME = "pretrain"
CANVAS = 64  # side of single and paired pictures, in pixels
SHAPES = ("square", "circle", "triangle")
SIZES = {"small": 0.22, "large": 0.40}  # shape side as a fraction of the canvas
# where a shape is, as the caption says it -> centre of the shape as fractions (x, y) of the canvas
POSITIONS = {
    "at the top left": (0.24, 0.24), "at the top": (0.5, 0.24), "at the top right": (0.76, 0.24),
    "on the left": (0.24, 0.5), "in the center": (0.5, 0.5), "on the right": (0.76, 0.5),
    "at the bottom left": (0.24, 0.76), "at the bottom": (0.5, 0.76), "at the bottom right": (0.76, 0.76),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}
STRIP_LENGTHS = (4, 8)  # frames a strip shows

SINGLE_PROMPTS = ("Describe the image.", "What do you see?", "What is in this picture?", "Write a short caption.")
PAIR_PROMPTS = ("Describe the two images.", "What do these two pictures show?", "Caption both pictures.")
STRIP_PROMPTS = ("Describe what happens in these frames.", "What moves in this clip?", "Describe the motion.")
# share of single pictures, pairs and frame strips in the corpus
KIND_WEIGHTS = {"single": 0.5, "pair": 0.25, "strip": 0.25}


def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: tuple, centre: tuple[float, float], side: float) -> None:
    half = side / 2
    cx, cy = centre
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    else:  # triangle pointing up
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=colour)


def shapes_picture(rng: np.random.Generator, num_objects: int = 1) -> tuple[Image.Image, str]:
    """A picture of `num_objects` shapes on a plain background and its caption."""
    background = _pick(rng, BACKGROUNDS)
    positions = list(rng.permutation(list(POSITIONS)))[:num_objects]
    image = Image.new("RGB", (CANVAS, CANVAS), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    phrases = []
    for position in positions:
        colour = _pick(rng, [name for name in BLOCK_COLOURS if name != background])
        shape = _pick(rng, SHAPES)
        # several objects stay small so they never overlap
        size = _pick(rng, SIZES) if num_objects == 1 else "small"
        fx, fy = POSITIONS[position]
        jitter = rng.uniform(-0.03, 0.03, size=2)
        centre = ((fx + jitter[0]) * CANVAS, (fy + jitter[1]) * CANVAS)
        _draw_shape(draw, shape, BLOCK_COLOURS[colour], centre, SIZES[size] * CANVAS)
        phrases.append(f"a {size} {colour} {shape} {position}")
    return image, f"{' and '.join(phrases)} on a {background} background"


def motion_strip(rng: np.random.Generator) -> tuple[list[Image.Image], str]:
    """Frames sampled from a clip of a moving block, the way video frames are sampled, and a caption."""
    colour = _pick(rng, BLOCK_COLOURS)
    direction = _pick(rng, DIRECTIONS)
    clip_length = int(rng.integers(CLIP_LENGTHS[0], CLIP_LENGTHS[1] + 1))
    clip = moving_block_frames(rng, BLOCK_COLOURS[colour], DIRECTIONS[direction], clip_length)
    shown = frame_indices(clip_length, _pick(rng, STRIP_LENGTHS))
    return [Image.fromarray(clip[i]) for i in shown], f"a {colour} block moving from {direction} on a dark background"


def corpus_record(rng: np.random.Generator, split: str, index: int, images_dir: Path) -> dict:
    """Draw one record's pictures into `images_dir/<split>/` and return its jsonl record."""
    kind = rng.choice(list(KIND_WEIGHTS), p=list(KIND_WEIGHTS.values()))
    stem = f"{split}/{index:07d}"
    if kind == "single":
        image, caption = shapes_picture(rng, num_objects=int(rng.integers(1, 3)))
        pictures, prompt = {f"{stem}.png": image}, _pick(rng, SINGLE_PROMPTS)
    elif kind == "pair":
        (first, first_caption), (second, second_caption) = shapes_picture(rng), shapes_picture(rng)
        pictures, prompt = {f"{stem}.0.png": first, f"{stem}.1.png": second}, _pick(rng, PAIR_PROMPTS)
        caption = f"the first image shows {first_caption}; the second image shows {second_caption}"
    else:
        frames, caption = motion_strip(rng)
        # frames are JPEG, like converted video frames
        pictures, prompt = {f"{stem}.{k}.jpg": frame for k, frame in enumerate(frames)}, _pick(rng, STRIP_PROMPTS)
    for relative, picture in pictures.items():
        picture.save(images_dir / relative)
    return {
        "id": record_id(split, index),
        "source": NAME,
        "conversations": conversation([(prompt, caption)], list(pictures)),
    }


def write_pretrain_corpus(out_dir: str | os.PathLike, seed: int, n: int) -> dict[str, int]:
    """Write `n` training records and max(2, n // 10) validation records; return records per split.

    Every record is a function of (seed, split, index) alone, so the corpus is reproducible.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"pre-training corpus size n must be a positive integer; got {n!r}")
    sizes = {"train": n, "val": max(2, n // 10)}
    with atomic_output_dir(out_dir) as tmp_out:
        images_dir = tmp_out / "images"
        for split_index, (split, count) in enumerate(sizes.items()):
            (images_dir / split).mkdir(parents=True)
            records = [
                corpus_record(np.random.default_rng([seed, split_index, index]), split, index, images_dir)
                for index in range(count)
            ]
            write_jsonl(tmp_out / f"{NAME}_{split}.jsonl", records)
    return sizes
