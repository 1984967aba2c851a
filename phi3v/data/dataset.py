"""Training examples and evaluation prompts built from the recipe's jsonl records."""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from phi3v.data import TRAIN_TURNS
from phi3v.data.records import first_turn_answers, Record, Turn, image_file, image_tags, read_records
from phi3v.errors import UserError
from phi3v.image_files import load_image
from phi3v.processing_phi3v import image_tag_numbers


def _turn_fields(turn: Turn | Mapping[str, Any]) -> tuple[list[str], str, str]:
    if isinstance(turn, Turn):
        return turn.images, turn.user, turn.assistant
    return list(turn.get("images", [])), turn["user"], turn["assistant"]


def with_image_tags(conversations: Sequence[Turn | Mapping[str, Any]]) -> list[dict[str, str]]:
    """Turns for `processor.encode_example`: tags prepended to a turn whose user text has none.

    Tags are numbered over the whole conversation (`<|image_1|><|image_2|>\\n` + text on the first
    turn, `<|image_3|>\\n` + text on a later turn with one image); tags already present are kept.
    """
    turns = []
    next_number = 1
    for turn in conversations:
        images, user, assistant = _turn_fields(turn)
        if images and not image_tag_numbers(user):
            user = f"{image_tags(range(next_number, next_number + len(images)))}\n{user}"
        next_number += len(images)
        turns.append({"user": user, "assistant": assistant})
    return turns


def _read_limited(jsonl_path: str | os.PathLike, max_samples: int | None) -> list[Record]:
    """The first `max_samples` records (all when None)."""
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
        raise UserError(f"max_samples={max_samples!r} — give a positive integer, or null for every sample")
    return read_records(jsonl_path)[:max_samples]


def draw_one_turn(record: Record, rng: random.Random) -> list[Turn]:
    """The recipe's DocVQA draw: one turn of the conversation at random, shown with the record's
    images, its target one of the turn's accepted answers at random (the first turn's are the
    record's `answers`). Every image stays, so tags written over the conversation still number right."""
    k = rng.randrange(len(record.conversations))
    turn = record.conversations[k]
    accepted = record.answers if k == 0 and record.answers else [turn.assistant]
    return [Turn(record.image_paths, turn.user, rng.choice(accepted))]


class ConversationDataset(Dataset):
    """One training example per record, encoded the way `train_turns` says (see
    `phi3v.data.TRAIN_TURNS`): every turn with every image (`all`), or one turn
    drawn per visit (`one_random`).

    Items are keyed by `index` or `(index, epoch)`: a draw comes from a generator seeded by
    (seed, epoch, index), so a sample gets a new draw each epoch and the same draw on every rerun
    or resume. An item is `processor.encode_example(...)` (1-D `input_ids`, `labels`,
    `pixel_values`, `image_sizes`) plus `num_images`.

    `cache_bytes`: encoded examples are kept in memory up to this many bytes of tensors, so that
    later epochs do not decode and transform the same images again (the same tensors, so the same
    training). 0 (the default) keeps none: DataLoader workers would each hold a copy.
    """

    def __init__(
        self,
        jsonl_path: str | os.PathLike,
        images_dir: str | os.PathLike,
        processor,
        num_crops: int,
        max_samples: int | None = None,
        *,
        train_turns: str = "all",
        seed: int = 0,
        cache_bytes: int = 0,
    ):

        if train_turns not in TRAIN_TURNS:
            raise UserError(f"train_turns={train_turns!r} — choose one of {', '.join(TRAIN_TURNS)}")
        self.records = _read_limited(jsonl_path, max_samples)
        self.images_dir = Path(images_dir)
        self.processor = processor
        self.num_crops = num_crops
        self.train_turns = train_turns
        self.seed = seed
        self.cache_bytes = cache_bytes
        self._cache: dict[tuple, dict[str, Any]] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    def conversation(self, index: int, epoch: int = 0) -> list[Turn]:
        """The turns sample `index` trains on in `epoch`."""
        record = self.records[index]
        if self.train_turns == "all":
            return record.conversations
        return draw_one_turn(record, random.Random(f"{self.seed}-{epoch}-{index}"))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        conversation = self.conversation(index, epoch)
        # A draw (`one_random`) may differ per epoch: the key is what is encoded, not the epoch.
        key = (index, tuple((tuple(turn.images), turn.user, turn.assistant) for turn in conversation))
        if key in self._cache:
            return dict(self._cache[key])  # collate builds new tensors: the cached ones stay unchanged
        paths = [path for turn in conversation for path in turn.images]
        images = [load_image(image_file(self.images_dir, path)) for path in paths]
        example = dict(self.processor.encode_example(with_image_tags(conversation), images, num_crops=self.num_crops))
        example["num_images"] = len(images)
        size = sum(value.nbytes for value in example.values() if isinstance(value, torch.Tensor))
        if self.cache_bytes and self._cached_bytes + size <= self.cache_bytes:
            self._cache[key] = example
            self._cached_bytes += size
            return dict(example)
        return example


@dataclass
class EvalExample:
    id: str
    prompt_user: str  # first turn's user text, image tags included
    image_paths: list[str]  # first turn's images, full paths
    answers: list[str]  # the record's `answers`, else the first turn's assistant text


def load_eval_examples(
    jsonl_path: str | os.PathLike, images_dir: str | os.PathLike, max_samples: int | None = None
) -> list[EvalExample]:
    """Evaluation uses the first turn of each record."""
    images_dir = Path(images_dir)
    examples = []
    for record in _read_limited(jsonl_path, max_samples):
        first = record.conversations[0]
        examples.append(EvalExample(
            id=record.id,
            prompt_user=with_image_tags(record.conversations[:1])[0]["user"],
            image_paths=[str(image_file(images_dir, path)) for path in first.images],
            answers=list(record.answers) if record.answers is not None else [first.assistant],
        ))
    return examples


def majority_answer(train_jsonl: str | os.PathLike) -> str:
    """The most frequent first-turn answer of the training split, counted after normalisation
    (ties: first seen) and returned in its most frequent original spelling, so that case-sensitive
    metrics (the recipe's ANLS) score the baseline fairly."""
    records = read_records(train_jsonl)
    if not records:
        raise UserError(f"{train_jsonl}: no records — the majority baseline needs a non-empty train split")
    normalised = first_turn_answers(records)
    winner = Counter(normalised).most_common(1)[0][0]
    spellings = Counter(
        record.conversations[0].assistant.strip()
        for record, answer in zip(records, normalised)
        if answer == winner
    )
    return spellings.most_common(1)[0][0]
