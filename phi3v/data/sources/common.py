"""Helpers every dataset source shares: jsonl splits and record ids."""

from __future__ import annotations

import json
import os
from typing import Iterable


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
