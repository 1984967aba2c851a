"""Reading a raw folder: its parquet shards (checked, rows located for messages) and their images."""

from __future__ import annotations

import io
import os
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import datasets
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from phi3v.errors import UserError


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
