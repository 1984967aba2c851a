"""The demo's pre-training corpus: valid records, captions that match the pictures, no task prompts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from phi3v.data.validation import validate_dataset
from phi3v.data.sources import pretrain_corpus, synthetic_images, synthetic_video, ucf101
from phi3v.errors import UserError

# Prompts and answers of the four fine-tuning tasks: none may appear in the corpus.
TASK_PROMPT_FRAGMENTS = [
    "Classify the video",
    "Answer briefly",
    "Answer yes or no",
    "Is the statement",
    "What is the colour of the",
    "Which field is",
    *synthetic_images.MEME_QUESTIONS,
]
TASK_ANSWERS = {
    *(name.lower() for name in ucf101.CLASS_NAMES),
    *(colour for colour in synthetic_video.BLOCK_COLOURS),
    *(field.lower() for field in synthetic_images.FORM_FIELDS),
    "yes", "no", "true", "false",
}
N = 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "pretrain"
    sizes = pretrain_corpus.write_pretrain_corpus(out, seed=3, n=N)
    return out, sizes


def records_of(out, split):
    return [json.loads(line) for line in (out / f"pretrain_{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_corpus_is_a_valid_dataset_with_every_kind_of_picture(corpus):
    out, sizes = corpus
    assert sizes == {"train": N, "val": 6}
    assert sorted(p.name for p in out.iterdir()) == ["images", "pretrain_train.jsonl", "pretrain_val.jsonl"]
    assert validate_dataset(out, "pretrain", splits=("train", "val")) == []
    train = records_of(out, "train")
    assert [r["id"] for r in train] == [f"train-{i:010d}" for i in range(N)]
    assert {r["source"] for r in train} == {"pretrain"}
    image_counts = {len(r["conversations"][0]["images"]) for r in train}
    assert {1, 2} <= image_counts and image_counts & set(pretrain_corpus.STRIP_LENGTHS)
    all_prompts = pretrain_corpus.SINGLE_PROMPTS + pretrain_corpus.PAIR_PROMPTS + pretrain_corpus.STRIP_PROMPTS
    prompts = set()
    for record in train:
        turn = record["conversations"][0]
        prompt = turn["user"]  # no tags: loading adds them, as for every converted dataset
        assert prompt in all_prompts
        prompts.add(prompt)
    assert len(prompts) >= 6


def test_corpus_holds_no_task_prompt_or_answer(corpus):
    out, _ = corpus
    for record in records_of(out, "train") + records_of(out, "val"):
        for turn in record["conversations"]:
            assert not any(fragment in turn["user"] for fragment in TASK_PROMPT_FRAGMENTS), turn["user"]
            assert turn["assistant"].strip(" .").lower() not in TASK_ANSWERS
            assert len(turn["assistant"].split()) >= 6  # a descriptive caption, not a one-word label


def test_corpus_is_reproducible(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    pretrain_corpus.write_pretrain_corpus(again, seed=3, n=N)
    assert (again / "pretrain_train.jsonl").read_bytes() == (out / "pretrain_train.jsonl").read_bytes()
    for path in sorted((out / "images").rglob("*.*"))[:40]:
        assert (again / path.relative_to(out)).read_bytes() == path.read_bytes()
    other = tmp_path / "other"
    pretrain_corpus.write_pretrain_corpus(other, seed=4, n=N)
    assert (other / "pretrain_train.jsonl").read_bytes() != (out / "pretrain_train.jsonl").read_bytes()


OBJECT_PHRASE = re.compile(
    r"a (?P<size>small|large) (?P<colour>\w+) (?P<shape>square|circle|triangle) "
    r"(?P<position>" + "|".join(map(re.escape, sorted(pretrain_corpus.POSITIONS, key=len, reverse=True))) + ")"
)
PICTURE_CAPTION = re.compile(r"^(?P<objects>.+) on a (?P<background>\w+) background$")


def test_single_picture_captions_match_the_pixels(corpus):
    out, _ = corpus
    objects_checked = {1: 0, 2: 0}
    for record in records_of(out, "train"):
        turn = record["conversations"][0]
        if len(turn["images"]) != 1:
            continue
        caption = PICTURE_CAPTION.match(turn["assistant"])
        objects = list(OBJECT_PHRASE.finditer(caption["objects"]))
        assert " and ".join(m.group(0) for m in objects) == caption["objects"]
        image = np.asarray(Image.open(out / "images" / turn["images"][0]).convert("RGB"))
        assert tuple(image[0, 0]) == pretrain_corpus.BACKGROUNDS[caption["background"]]
        for shape in objects:
            fx, fy = pretrain_corpus.POSITIONS[shape["position"]]
            # the shape's centre (a triangle's too) holds its colour
            x, y = round(fx * pretrain_corpus.CANVAS), round(fy * pretrain_corpus.CANVAS)
            assert tuple(image[y, x]) == synthetic_video.BLOCK_COLOURS[shape["colour"]], turn["assistant"]
            assert shape["colour"] != caption["background"]
        objects_checked[len(objects)] += 1
    assert objects_checked[1] >= 3 and objects_checked[2] >= 3


def test_motion_strips_show_the_captioned_colour_and_direction():
    rng = np.random.default_rng(11)
    for _ in range(12):
        frames, caption = pretrain_corpus.motion_strip(rng)
        colour, direction = re.match(r"^a (\w+) block moving from (.+) on a dark background$", caption).groups()
        assert len(frames) in pretrain_corpus.STRIP_LENGTHS
        first, last = (np.asarray(frames[i], dtype=np.int64) for i in (0, -1))
        target = np.array(synthetic_video.BLOCK_COLOURS[colour])
        centres = [np.argwhere((f == target).all(axis=-1)).mean(axis=0) for f in (first, last)]  # (y, x)
        dy, dx = centres[1] - centres[0]
        step_x, step_y = synthetic_video.DIRECTIONS[direction]
        for step, moved in ((step_x, dx), (step_y, dy)):
            assert (moved > 3) if step > 0 else (moved < -3) if step < 0 else moved == 0


@pytest.mark.parametrize("n", [0, -3, 2.5, "10", True])
def test_corpus_size_must_be_a_positive_integer(tmp_path, n):
    with pytest.raises(UserError, match="positive integer"):
        pretrain_corpus.write_pretrain_corpus(tmp_path / "c", seed=0, n=n)
    assert not (tmp_path / "c").exists()
