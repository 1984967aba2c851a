"""Raw folders in the hub's layouts, written by hand with pyarrow, and local hub caches to download them from."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hub_fixture import use_hub_cache
from PIL import Image

from phi3v.hub_cache import write_cached_repo

class LocalHub:
    """A hub cache folder in huggingface_hub's layout, used offline: downloads resolve from it alone."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir
        self.commits: dict[str, str] = {}

    def repo(self, repo_id: str, files: dict[str, bytes], *, ref: str = "main", repo_type: str = "dataset") -> str:
        """Cache `files` as one commit of `repo_id` that `ref` points to; return the commit."""
        self.commits[repo_id] = write_cached_repo(self.cache_dir, repo_id, files, repo_type=repo_type, ref=ref)
        return self.commits[repo_id]

    def install(self, monkeypatch) -> None:
        use_hub_cache(monkeypatch, hub_dir=self.cache_dir)


IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# The mini set's parquet schema, written with plain pyarrow (no `datasets` metadata in the file).
NIELSR_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", IMAGE_STRUCT),
    ("query", pa.struct([(lang, pa.string()) for lang in ("de", "en", "es", "fr", "it")])),
    ("answers", pa.list_(pa.string())),
    ("words", pa.list_(pa.string())),
    ("bounding_boxes", pa.list_(pa.list_(pa.float32(), 4))),
    ("answer", pa.struct([("match_score", pa.float64()), ("matched_text", pa.string()),
                          ("start", pa.int64()), ("text", pa.string())])),
])


def image_bytes(colour, size=(20, 16), image_format="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=image_format)
    return buffer.getvalue()


def nielsr_row(row_id: str, question: str, answers: list[str], image: dict) -> dict:
    return {
        "id": row_id, "image": image,
        "query": {"de": "Frage", "en": question, "es": None, "fr": None, "it": None},
        "answers": answers, "words": ["Total", "12"], "bounding_boxes": [[0, 0, 10, 10], [20, 0, 30, 10]],
        "answer": {"match_score": 1.0, "matched_text": answers[0], "start": 1, "text": answers[0]},
    }


def write_nielsr(raw: Path, split: str, rows: list[dict], shard: str = "00000-of-00001-abc") -> Path:
    path = raw / "data" / f"{split}-{shard}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=NIELSR_SCHEMA), path)
    return path


CAULDRON_SCHEMA = pa.schema([
    ("images", pa.list_(IMAGE_STRUCT)),
    ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())]))),
])


def write_cauldron(raw: Path, config: str, rows: list, shard: str = "00000-of-00001-0a1b") -> Path:
    """`rows` = [(list of image bytes, [(user, assistant), ...]), ...] -> `<config>/train-<shard>.parquet`."""
    table = pa.Table.from_pylist(
        [{"images": [{"bytes": data, "path": None} for data in images],
          "texts": [{"user": u, "assistant": a, "source": "hand"} for u, a in turns]} for images, turns in rows],
        schema=CAULDRON_SCHEMA,
    )
    path = raw / config / f"train-{shard}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


