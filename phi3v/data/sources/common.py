"""Helpers every dataset source shares: jsonl splits, record ids, conversations, synthetic split sizes."""

from __future__ import annotations

import json
import os
from typing import Iterable

from phi3v.errors import UserError


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write one JSON object per line (UTF-8, no ASCII escaping); return the number of lines."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def record_id(split: str, index: int) -> str:
    """Deterministic record id, as the recipe's converters write them: `<split>-<10-digit index>`."""
    return f"{split}-{index:010d}"


def conversation(turns: list[tuple[str, str]], image_paths: list[str]) -> list[dict]:
    """The recipe's `conversations`: every image on the first turn, later turns text only.

    The user text carries no `<|image_k|>` tags, as in the recipe's converted files: loading adds
    them (`phi3v.data.dataset.with_image_tags`), so a custom dataset without tags works the same.
    """
    (first_user, first_assistant), later = turns[0], turns[1:]
    first = {"images": image_paths, "user": first_user, "assistant": first_assistant}
    return [first] + [{"images": [], "user": user, "assistant": assistant} for user, assistant in later]


def synthetic_sizes(sizes: dict, splits: tuple[str, ...], task: str) -> dict[str, int]:
    """`sizes` of a synthetic dataset checked before anything is written: a positive int per split."""
    expected = "{" + ", ".join(f"'{split}': int" for split in splits) + "}"
    try:
        counts = {split: int(sizes[split]) for split in splits}
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"sizes for synthetic {task} must be {expected}, got {sizes!r}.") from error
    if min(counts.values()) < 1:
        raise UserError(f"sizes for synthetic {task} must be positive, got {sizes!r}.")
    return counts
