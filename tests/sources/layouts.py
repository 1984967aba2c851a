"""Raw folders in the hub's layouts, written by hand with pyarrow, and a local stand-in for the hub."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub.utils import filter_repo_objects
from PIL import Image

from phi3v.data.sources import hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    """Stands in for the hub's network: a local folder per repo, published sizes/sha256, call log."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[tuple] = []

    def repo(self, repo_id: str, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            path = self.root / repo_id / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def _files(self, repo_id: str) -> list[str]:
        base = self.root / repo_id
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    def install(self, monkeypatch) -> None:
        local = self

        class Api:
            def repo_info(self, repo_id, *, repo_type=None, revision=None, files_metadata=False):
                local.calls.append(("repo_info", repo_id, repo_type, revision))
                siblings = []
                for name in local._files(repo_id):
                    data = (local.root / repo_id / name).read_bytes()
                    lfs = SimpleNamespace(size=len(data), sha256=hashlib.sha256(data).hexdigest())
                    siblings.append(SimpleNamespace(rfilename=name, size=len(data), lfs=lfs))
                return SimpleNamespace(sha=COMMIT, siblings=siblings)

        def snapshot_download(repo_id, *, repo_type, revision, allow_patterns, cache_dir):
            local.calls.append(("snapshot_download", repo_id, repo_type, revision, list(allow_patterns), cache_dir))
            snapshot = Path(cache_dir) / "snapshots" / revision
            for name in filter_repo_objects(local._files(repo_id), allow_patterns=allow_patterns):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(local.root / repo_id / name, snapshot / name)
            return str(snapshot)

        def hf_hub_download(repo_id, filename, *, repo_type, revision, cache_dir):
            local.calls.append(("hf_hub_download", repo_id, filename, repo_type, revision, cache_dir))
            target = Path(cache_dir) / "snapshots" / revision / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(local.root / repo_id / filename, target)
            return str(target)

        monkeypatch.setattr(hub, "HfApi", Api)
        monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
        monkeypatch.setattr(hub, "hf_hub_download", hf_hub_download)


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


