"""Writing a converted split: recipe records and their image files, rows with corrupt images named or skipped."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from phi3v.data.sources.common import conversation, record_id, write_jsonl
from phi3v.data.sources.raw_folder import CorruptImageError, image_bytes, image_file
from phi3v.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class RawExample:
    """One row of a raw folder, ready to become a record: its turns and its images (hub structs)."""

    index: int  # the row's index in its hub split: the record id is `<split>-<index>`
    where: str  # `file row N`, to name the row in messages
    turns: list[tuple[str, str]]  # (user, assistant), user text without image tags
    images: list[dict]
    parquet_dir: Path
    answers: list[str] | None = None


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
