"""The hub's dataset layouts: fill a raw folder from the Hugging Face Hub, read it back, write records.

A *raw folder* mirrors a hub dataset repository (same relative paths, same parquet columns), whether
it was downloaded (`download_snapshot`, `download_file`) or generated for the demo. `SOURCE.json`
at its root says where the files came from: the repository and the resolved commit, or the generator.
The converters read raw folders with `iter_parquet_rows` and write recipe records with `SplitWriter`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import datasets
import huggingface_hub
import pyarrow.parquet as pq
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.utils import filter_repo_objects
from PIL import Image, UnidentifiedImageError

from phi3v.data.sources.common import record_id, write_jsonl
from phi3v.errors import UserError

logger = logging.getLogger(__name__)

SOURCE_FILE = "SOURCE.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NO_TREE_LISTING = tuple(
    getattr(huggingface_hub.errors, name)
    for name in ("CachedRepoTreeNotFoundError",)
    if hasattr(huggingface_hub.errors, name)
)


class NoMatchingFiles(UserError):
    """No file of the repository matches the requested patterns."""


# Errors the hub client raises for a wrong repo id/revision or an unreachable hub (the names that
# exist depend on the huggingface_hub version; its transport errors are OSError in older ones).
_HUB_ERRORS = tuple(
    getattr(huggingface_hub.errors, name)
    for name in ("HfHubHTTPError", "HTTPError", "HFValidationError", "XetDownloadError")
    if hasattr(huggingface_hub.errors, name)
) + (OSError,)


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def write_source_record(raw_dir: str | os.PathLike, record: dict) -> Path:
    """Write `raw_dir/SOURCE.json` (sorted keys, so identical sources give identical files)."""
    path = Path(raw_dir) / SOURCE_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


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


def read_source_record(raw_dir: str | os.PathLike) -> dict | None:
    """The raw folder's `SOURCE.json`, or None when it has none."""
    path = Path(raw_dir) / SOURCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _hub_failure(repo_id: str, revision: str | None, error: Exception) -> UserError:
    offline = " (HF_HUB_OFFLINE is set: only what the hub cache already holds can be used)" if constants.HF_HUB_OFFLINE else ""
    return UserError(
        f"could not fetch the hub repository '{repo_id}' at revision '{revision or 'main'}'{offline}: "
        f"{type(error).__name__}: {error}. Check the repository name and revision, the network, "
        "and HF_TOKEN for gated repositories; rerunning resumes the download."
    )


def _published_files(repo_id: str, repo_type: str, commit: str, cache_dir, snapshot: Path) -> dict[str, dict]:
    """{path: {size, sha256}} of every file of the repo at `commit`, as the hub publishes them.

    Read without network from the tree listing huggingface_hub caches with each snapshot download (so an
    offline machine that downloaded once works); the sha256 of an LFS file is the name of its cached blob
    (the hub's etag). huggingface_hub versions without that listing ask the hub API.
    """
    cached_tree = getattr(huggingface_hub, "get_cached_repo_tree", None)
    try:
        if cached_tree is None:
            raise LookupError("this huggingface_hub keeps no tree listing")
        tree = cached_tree(repo_id, repo_type=repo_type, revision=commit, cache_dir=cache_dir)
    except (LookupError,) + _NO_TREE_LISTING:
        try:
            info = HfApi().repo_info(repo_id, repo_type=repo_type, revision=commit, files_metadata=True)
        except _HUB_ERRORS as error:
            raise _hub_failure(repo_id, commit, error) from error
        return {s.rfilename: _published_record(s) for s in info.siblings or []}
    files = {}
    for entry in tree:
        blob = Path(os.path.realpath(snapshot / entry.path)).name
        files[entry.path] = {"size": entry.size, "sha256": blob if _SHA256.fullmatch(blob) else None}
    return files


def _published_record(sibling) -> dict:
    lfs = getattr(sibling, "lfs", None)
    size = sibling.size if sibling.size is not None else (lfs.size if lfs else None)
    return {"size": size, "sha256": lfs.sha256 if lfs else None}


def _place_file(cached: Path, target: Path) -> None:
    """Hard-link a cached file into the raw folder (copy across file systems): no second copy on disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    blob = Path(os.path.realpath(cached))
    try:
        os.link(blob, target)
    except OSError:
        shutil.copy2(blob, target)


def _check_sizes(raw_dir: Path, files: dict[str, dict], repo_id: str, commit: str) -> None:
    for name, published in files.items():
        local = raw_dir / name
        if published["size"] is not None and local.stat().st_size != published["size"]:
            raise UserError(
                f"{local}: {local.stat().st_size} bytes, but the hub publishes {published['size']} bytes "
                f"for {repo_id}@{commit}/{name}. Delete the file (and the hub cache entry) and rerun."
            )


def download_snapshot(
    repo_id: str,
    raw_dir: str | os.PathLike,
    *,
    allow_patterns: list[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    repo_type: str = "dataset",
) -> dict:
    """Download the files of `repo_id` matching `allow_patterns` into `raw_dir`, in the repo's layout.

    `snapshot_download` resolves the revision to one commit (from the hub, or offline from the cache's
    refs) and fetches every file at that commit, so one raw folder never mixes two versions. Files go
    through the hub cache (`cache_dir`, default `$HF_HOME/hub`), which resumes interrupted downloads, and
    are hard-linked into `raw_dir`. Returns the record written to `raw_dir/SOURCE.json` (repo, requested
    revision, commit, patterns, published size/sha256 per file).
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    # A folder without SOURCE.json is incomplete: remove it first so an interrupted update is visible.
    (raw_dir / SOURCE_FILE).unlink(missing_ok=True)
    try:
        snapshot = Path(
            snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                allow_patterns=allow_patterns,
                cache_dir=cache_dir,
            )
        )
    except _HUB_ERRORS as error:
        raise _hub_failure(repo_id, revision, error) from error
    commit = snapshot.name  # the cache names each snapshot folder after its commit
    published = _published_files(repo_id, repo_type, commit, cache_dir, snapshot)
    wanted = sorted(filter_repo_objects(published, allow_patterns=allow_patterns))
    if not wanted:
        raise NoMatchingFiles(
            f"no file of {repo_id}@{commit} matches {allow_patterns}; check the dataset name and "
            "configuration (they are case-sensitive)."
        )

    # Files of an older revision that the patterns cover would be read by the converters: drop them.
    for stale in sorted(filter_repo_objects(_relative_files(raw_dir), allow_patterns=allow_patterns)):
        if stale not in wanted:
            (raw_dir / stale).unlink()
    for name in wanted:
        cached = snapshot / name
        if not cached.exists():
            raise UserError(
                f"the hub download of {repo_id}@{commit} lacks '{name}'; rerun to resume the download."
            )
        _place_file(cached, raw_dir / name)

    files = {name: published[name] for name in wanted}
    _check_sizes(raw_dir, files, repo_id, commit)
    record = {
        "repo_id": repo_id,
        "repo_type": repo_type,
        "revision": revision,
        "commit": commit,
        "allow_patterns": list(allow_patterns),
        "files": files,
    }
    write_source_record(raw_dir, record)
    return record


def download_file(
    repo_id: str,
    filename: str,
    raw_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    repo_type: str = "dataset",
) -> Path:
    """Download one file of `repo_id` into `raw_dir/filename` (`download_snapshot` of that one file).

    Returns the local path; `raw_dir/SOURCE.json` records the repo, requested revision and commit.
    """
    # The name as a pattern that matches only itself (fnmatch's wildcards escaped).
    pattern = re.sub(r"([*?\[])", r"[\1]", filename)
    try:
        download_snapshot(repo_id, raw_dir, allow_patterns=[pattern], revision=revision, cache_dir=cache_dir,
                          repo_type=repo_type)
    except NoMatchingFiles:
        raise UserError(
            f"'{filename}' is not a file of {repo_id} at revision '{revision or 'main'}'; check the file name "
            "(case-sensitive)."
        ) from None
    return Path(raw_dir) / filename


# Everything a model folder needs; the hub's remote-code .py files are not (the model is native).
MODEL_CONFIG_FILES = ["*.json", "tokenizer*", "*.model", "*.jinja", "*.txt"]
MODEL_WEIGHT_FILES = ["*.safetensors"]


def download_model(
    repo_id: str,
    out_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights: bool = True,
) -> dict:
    """The hub's model folder (configs, tokenizer, processor config; weights unless `weights=False`) in
    `out_dir`, plus the provenance file that runs started from it record. Returns the SOURCE.json record."""
    from phi3v.provenance import MODEL_SOURCE_FILE

    patterns = MODEL_CONFIG_FILES + (MODEL_WEIGHT_FILES if weights else [])
    record = download_snapshot(repo_id, out_dir, allow_patterns=patterns, revision=revision, cache_dir=cache_dir,
                               repo_type="model")
    provenance = {"model": {"id": repo_id, "revision": record["commit"]}}
    (Path(out_dir) / MODEL_SOURCE_FILE).write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    return record


def _relative_files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


# ---------------------------------------------------------------------------------------------
# Reading a raw folder
# ---------------------------------------------------------------------------------------------


def parquet_files(raw_dir: str | os.PathLike, pattern: str, *, fix: str) -> list[Path]:
    """The raw folder's parquet shards matching `pattern`, in shard order; UserError when there are none."""
    files = sorted(Path(raw_dir).glob(pattern))
    if not files:
        raise UserError(f"{raw_dir}: no file matches '{pattern}'. {fix}")
    return files


def check_columns(files: list[Path], required: list[str], *, fix: str) -> None:
    """Every shard holds the hub's columns (extra columns are fine)."""
    for path in files:
        try:
            names = pq.read_schema(path).names
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise UserError(f"{path}: not a readable parquet file ({error}). {fix}") from error
        missing = [name for name in required if name not in names]
        if missing:
            raise UserError(f"{path}: missing column(s) {missing} (has {names}). {fix}")


@dataclass(frozen=True)
class RowLocator:
    """Maps a row index over several shards back to `file row N`, for messages that name the culprit."""

    files: list[Path]
    starts: list[int]

    @classmethod
    def for_files(cls, files: list[Path]) -> "RowLocator":
        starts, total = [], 0
        for path in files:
            starts.append(total)
            total += pq.ParquetFile(path).metadata.num_rows
        return cls(files, starts + [total])

    @property
    def num_rows(self) -> int:
        return self.starts[-1]

    def describe(self, index: int) -> str:
        shard = bisect_right(self.starts, index) - 1
        return f"{self.files[shard]} row {index - self.starts[shard]}"


class CorruptImageError(Exception):
    """An image of the raw data that does not decode."""


def image_bytes(image: dict | None, parquet_dir: Path) -> bytes:
    """The encoded bytes of a hub image struct `{bytes, path}` (`path` relative to the parquet file)."""
    if image is None:
        raise CorruptImageError("the image is missing (null)")
    if image.get("bytes"):
        return image["bytes"]
    path = image.get("path")
    if path and (parquet_dir / path).is_file():
        return (parquet_dir / path).read_bytes()
    raise CorruptImageError(f"the image has no bytes and its path {path!r} does not exist")


def decode_image(data: bytes) -> Image.Image:
    """Fully decode encoded image bytes (a truncated file fails here, not later in training)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise CorruptImageError(f"{type(error).__name__}: {error}") from error
    return image


def image_file(data: bytes) -> tuple[str, bytes]:
    """(extension, bytes) to store an image: PNG and JPEG unchanged, so the pixels stay exactly the
    hub's; any other format re-encoded as PNG. Raises CorruptImageError for bytes that do not decode."""
    image = decode_image(data)
    if image.format == "JPEG":
        return "jpg", data
    if image.format == "PNG":
        return "png", data
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "png", buffer.getvalue()


def iter_parquet_rows(files: list[Path], image_columns: dict) -> Iterator[dict]:
    """Rows of the shards in order, read with `datasets` (streaming: no second copy in an Arrow cache).

    `image_columns` maps a column to its undecoded image feature (`Image(decode=False)` or a list of
    them), so rows carry the images as `{bytes, path}` whether or not the parquet has HF metadata.
    """
    dataset = datasets.load_dataset(
        "parquet", data_files={"train": [str(p) for p in files]}, split="train", streaming=True
    )
    for column, feature in image_columns.items():
        dataset = dataset.cast_column(column, feature)
    yield from dataset


# ---------------------------------------------------------------------------------------------
# Writing recipe records
# ---------------------------------------------------------------------------------------------


@dataclass
class RawExample:
    """One row of a raw folder, ready to become a record: its turns and its images (hub structs)."""

    index: int  # the row's index in its hub split: the record id is `<split>-<index>`
    where: str  # `file row N`, to name the row in messages
    turns: list[tuple[str, str]]  # (user, assistant), user text without image tags
    images: list[dict]
    parquet_dir: Path
    answers: list[str] | None = None


def conversation(turns: list[tuple[str, str]], image_paths: list[str]) -> list[dict]:
    """The recipe's `conversations`: every image on the first turn, later turns text only.

    The user text carries no `<|image_k|>` tags, as in the recipe's converted files: loading adds
    them (`phi3v.data.dataset.with_image_tags`), so a custom dataset without tags works the same.
    """
    (first_user, first_assistant), later = turns[0], turns[1:]
    first = {"images": image_paths, "user": first_user, "assistant": first_assistant}
    return [first] + [{"images": [], "user": user, "assistant": assistant} for user, assistant in later]


class SplitWriter:
    """Collects one split's records and saves their images as `images/<split>/<id>.<k>.<ext>`.

    A row whose image does not decode raises UserError naming the row, or is skipped (and counted)
    with `skip_corrupt=True`. `finish()` writes `<name>_<split>.jsonl`.
    """

    def __init__(self, out_dir: Path, name: str, split: str, source: str, *, skip_corrupt: bool):
        self.out_dir, self.name, self.split, self.source = Path(out_dir), name, split, source
        self.skip_corrupt = skip_corrupt
        self.records: list[dict] = []
        self.skipped: list[str] = []

    def add(self, example: RawExample) -> None:
        files = []
        for k, image in enumerate(example.images):
            try:
                files.append(image_file(image_bytes(image, example.parquet_dir)))
            except CorruptImageError as error:
                message = f"{example.where}: image {k} is corrupt ({error})"
                if not self.skip_corrupt:
                    raise UserError(
                        f"{message}. Re-download the raw data, or convert with skip_corrupt=True "
                        "to skip such rows."
                    ) from error
                logger.warning("%s; row skipped", message)
                self.skipped.append(example.where)
                return
        rid = record_id(self.split, example.index)
        paths = []
        for k, (extension, payload) in enumerate(files):
            relative = f"{self.split}/{rid}.{k}.{extension}"
            target = self.out_dir / "images" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
            paths.append(relative)
        record = {"id": rid, "source": self.source, "conversations": conversation(example.turns, paths)}
        if example.answers is not None:
            record["answers"] = list(example.answers)
        self.records.append(record)

    def finish(self) -> dict:
        """Write the jsonl; return `{"records": n, "skipped_corrupt": n}`."""
        if not self.records:
            raise UserError(
                f"the {self.split} split of {self.name} is empty after conversion; check the raw "
                "data and the split sizes."
            )
        write_jsonl(self.out_dir / f"{self.name}_{self.split}.jsonl", self.records)
        return {"records": len(self.records), "skipped_corrupt": len(self.skipped)}
