"""UCF-101 (10-class subset): download from the hub, synthesize a look-alike, convert to the recipe's format.

The raw folder holds `UCF101_subset.tar.gz` with `UCF101_subset/{train,val,test}/<Class>/*.avi`, whether it
came from the hub or from `synthesize_ucf101`. Conversion samples 8 frames a video with PyAV and writes
`ucf101_<split>.jsonl` plus `images/<split>/<Class>/<video_stem>.<k>.jpg`.
"""

from __future__ import annotations

import gzip
import logging
import os
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Iterable

import av
import numpy as np
from PIL import Image

from phi3v.data.sources import hub
from phi3v.data.sources.common import conversation, record_id, write_jsonl
from phi3v.data.sources.synthetic_video import (
    BLOCK_COLOURS,
    CLIP_LENGTHS,
    DIRECTIONS,
    encode_avi,
    moving_block_frames,
    write_tar_gz,
)
from phi3v.errors import UserError
from phi3v.files import atomic_output_dir

logger = logging.getLogger(__name__)

HUB_REPO_ID = "sayakpaul/ucf101-subset"
ARCHIVE_NAME = "UCF101_subset.tar.gz"
ARCHIVE_ROOT = "UCF101_subset"
SOURCE_NAME = "ucf101"
SPLITS = ("train", "val", "test")
FRAMES_PER_VIDEO = 8

# The synthetic subset: one class per colour of a moving block, each with its own direction of motion.
CLASS_PATTERNS = {
    "ApplyEyeMakeup": ("red", "left to right"),
    "ApplyLipstick": ("green", "right to left"),
    "Archery": ("blue", "top to bottom"),
    "BabyCrawling": ("yellow", "bottom to top"),
    "BalanceBeam": ("magenta", "top left to bottom right"),
    "BandMarching": ("cyan", "bottom right to top left"),
    "BaseballPitch": ("orange", "top right to bottom left"),
    "Basketball": ("purple", "bottom left to top right"),
    "BasketballDunk": ("white", "left to right"),
    "BenchPress": ("brown", "bottom to top"),
}
CLASS_NAMES = tuple(sorted(CLASS_PATTERNS))
DEFAULT_VIDEOS_PER_CLASS = {"train": 30, "val": 3, "test": 8}

# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def download_ucf101(raw_dir: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Fetch the recipe's UCF-101 subset archive into `raw_dir` (commit recorded in SOURCE.json); return its path."""
    return hub.download_file(HUB_REPO_ID, ARCHIVE_NAME, raw_dir, revision=revision, cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


class UnreadableVideo(Exception):
    """A video that cannot be sampled; the message says why."""


def classification_prompt(class_names: Iterable[str]) -> str:
    """The recipe's question (without the frames' image tags)."""
    return f"Classify the video into one of the following classes: {', '.join(sorted(class_names))}."


def frame_indices(total_frames: int, num_frames: int = FRAMES_PER_VIDEO) -> list[int]:
    """Evenly strided frame indices from frame 0, as the recipe samples them: int(k * total / n)."""
    return [int(k * total_frames / num_frames) for k in range(num_frames)]


def _count_decoded_frames(video_path: Path) -> int:
    with av.open(str(video_path)) as container:
        return sum(1 for _ in container.decode(video=0))


def sample_frames(video_path: str | os.PathLike, num_frames: int = FRAMES_PER_VIDEO) -> list[Image.Image]:
    """Decode the frames at `frame_indices(total, num_frames)` as RGB images; raise UnreadableVideo if impossible."""
    video_path = Path(video_path)
    try:
        with av.open(str(video_path)) as container:
            if not container.streams.video:
                raise UnreadableVideo("it has no video stream")
            stream = container.streams.video[0]
            # the container header gives the count; some containers leave it 0, then count by decoding
            total = stream.frames or _count_decoded_frames(video_path)
            if total < num_frames:
                raise UnreadableVideo(f"it has {total} frames, fewer than the {num_frames} sampled from each video")
            wanted = frame_indices(total, num_frames)
            picked: dict[int, Image.Image] = {}
            decoded = 0
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if index in wanted:
                    picked[index] = frame.to_image()
                if index >= wanted[-1]:
                    break
    except av.FFmpegError as err:
        raise UnreadableVideo(f"PyAV cannot decode it ({err})") from err
    if len(picked) < len(set(wanted)):
        raise UnreadableVideo(f"it declares {total} frames but only {decoded} could be decoded")
    return [picked[index].convert("RGB") for index in wanted]


def _archive_path(raw_dir: Path) -> Path:
    archive = raw_dir / ARCHIVE_NAME
    if not archive.is_file():
        raise UserError(
            f"{archive} not found. Run download_ucf101 (paper preset) or synthesize_ucf101 (demo preset) "
            f"into {raw_dir} first."
        )
    return archive


def _check_member(member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    """Refuse entries that would land outside `dest` or that are not plain files or folders."""
    target = (dest / member.name).resolve()
    if os.path.isabs(member.name) or not target.is_relative_to(dest):
        raise UserError(
            f"{archive}: entry {member.name!r} points outside the extraction folder; refusing to extract it. "
            f"Delete the archive and download it again."
        )
    if not (member.isfile() or member.isdir()):
        raise UserError(
            f"{archive}: entry {member.name!r} is a link or special file; only files and folders are allowed. "
            f"Delete the archive and download it again."
        )


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive (plain or compressed) into `dest` after checking every entry."""
    dest = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, dest, archive)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **extra)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise UserError(f"{archive} is not a readable tar archive ({err}). Delete it and download it again.") from err


def list_videos(root: Path, splits: Iterable[str]) -> list[tuple[str, str, Path]]:
    """(split, class name, path) of every .avi under `root/<split>/<Class>/`, sorted by split order, class, file."""
    videos = []
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise UserError(
                f"the UCF-101 archive has no folder {ARCHIVE_ROOT}/{split}/; expected "
                f"{ARCHIVE_ROOT}/{{{','.join(SPLITS)}}}/<Class>/*.avi. Check the archive or the splits asked for."
            )
        split_videos = sorted(split_dir.glob("*/*.avi"))
        if not split_videos:
            raise UserError(f"the UCF-101 archive has no videos under {ARCHIVE_ROOT}/{split}/<Class>/*.avi")
        videos += [(split, path.parent.name, path) for path in split_videos]
    return videos


def _video_record(index: int, split: str, class_name: str, video_path: Path, question: str) -> dict:
    prefix = f"{split}/{class_name}/{video_path.stem}"
    frames = [f"{prefix}.{k}.jpg" for k in range(FRAMES_PER_VIDEO)]
    return {
        "id": record_id(split, index),
        "source": SOURCE_NAME,
        "conversations": conversation([(question, class_name)], frames),
    }


def convert_ucf101(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    skip_corrupt: bool = False,
    splits: Iterable[str] = SPLITS,
    name: str = SOURCE_NAME,
) -> dict:
    """Convert the raw archive to `<name>_<split>.jsonl` (default `ucf101_…`) + frames; return {split: {"records", "skipped_corrupt"}}.

    Ids number the videos in one sequence over the splits (train, val, test; classes and files sorted), as the
    recipe's converter does. A video that cannot be sampled stops the conversion with its name, unless
    `skip_corrupt`, which leaves it out (logged by name; its id number stays unused) and counts it.
    """
    raw_dir = Path(raw_dir)
    splits = tuple(splits)
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise UserError(f"UCF-101 splits must be a non-empty subset of {list(SPLITS)}; got {list(splits)}")
    archive = _archive_path(raw_dir)
    with atomic_output_dir(out_dir) as tmp_out, tempfile.TemporaryDirectory(
        prefix=".ucf101-extract-", dir=tmp_out.parent
    ) as extract_dir:
        safe_extract(archive, Path(extract_dir))
        root = Path(extract_dir) / ARCHIVE_ROOT
        videos = list_videos(root, splits)
        question = classification_prompt({class_name for _, class_name, _ in videos})

        records: dict[str, list[dict]] = {split: [] for split in splits}
        unreadable: dict[str, list[str]] = {split: [] for split in splits}
        for index, (split, class_name, video_path) in enumerate(videos):
            try:
                frames = sample_frames(video_path)
            except UnreadableVideo as err:
                unreadable[split].append(f"{video_path.relative_to(root.parent).as_posix()} ({err})")
                continue
            frame_dir = tmp_out / "images" / split / class_name
            frame_dir.mkdir(parents=True, exist_ok=True)
            for k, frame in enumerate(frames):
                # PIL's default JPEG quality, as the recipe's converter saves frames
                frame.save(frame_dir / f"{video_path.stem}.{k}.jpg", format="JPEG")
            records[split].append(_video_record(index, split, class_name, video_path, question))

        bad = [video for videos_of_split in unreadable.values() for video in videos_of_split]
        if bad and not skip_corrupt:
            raise UserError(
                f"{archive}: {len(bad)} video(s) cannot be sampled: " + "; ".join(bad)
                + ". Replace the archive, or convert with skip_corrupt=True to leave them out."
            )
        for video in bad:
            logger.warning("UCF-101: %s; video skipped", video)
        for split, split_records in records.items():
            if not split_records:
                raise UserError(f"{archive}: no readable videos left in split {split!r}")
            write_jsonl(tmp_out / f"{name}_{split}.jsonl", split_records)
    return {split: {"records": len(records[split]), "skipped_corrupt": len(unreadable[split])} for split in splits}


# ---------------------------------------------------------------------------------------------
# Synthetic look-alike
# ---------------------------------------------------------------------------------------------


def _videos_per_class(sizes: dict) -> dict[str, int]:
    """`sizes` ({"train": n, "val": n, "test": n} videos per class) checked, in split order."""
    if not isinstance(sizes, dict) or set(sizes) != set(SPLITS):
        raise UserError(
            f"sizes for synthetic ucf101 must give videos per class for exactly {list(SPLITS)}; got {sizes!r}"
        )
    for split, count in sizes.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UserError(
                f"sizes for synthetic ucf101: {split!r} must be a positive number of videos per class; got {count!r}"
            )
    return {split: sizes[split] for split in SPLITS}


def synthesize_ucf101(raw_dir: str | os.PathLike, seed: int, sizes: dict[str, int] | None = None) -> dict:
    """Write a synthetic `UCF101_subset.tar.gz` in the hub layout and SOURCE.json into `raw_dir`; return the record.

    `sizes` gives videos per class for each split (default DEFAULT_VIDEOS_PER_CLASS, the real subset's
    proportions). Every class is a block of one colour moving in one direction (CLASS_PATTERNS), with random
    size, path, background shade and length (12-20 frames). The archive is a function of `seed` and `sizes`.
    """
    counts = _videos_per_class(DEFAULT_VIDEOS_PER_CLASS if sizes is None else sizes)
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for class_index, class_name in enumerate(CLASS_NAMES):
        colour_name, direction_name = CLASS_PATTERNS[class_name]
        clip_number = 0  # numbers clips of a class over all splits, like UCF-101's g<group>_c<clip> names
        for split_index, split in enumerate(SPLITS):
            for video_index in range(counts[split]):
                rng = np.random.default_rng([seed, class_index, split_index, video_index])
                num_frames = int(rng.integers(CLIP_LENGTHS[0], CLIP_LENGTHS[1] + 1))
                frames = moving_block_frames(rng, BLOCK_COLOURS[colour_name], DIRECTIONS[direction_name], num_frames)
                group, clip = divmod(clip_number, 4)
                name = f"{ARCHIVE_ROOT}/{split}/{class_name}/v_{class_name}_g{group + 1:02d}_c{clip + 1:02d}.avi"
                files[name] = encode_avi(frames)
                clip_number += 1
    write_tar_gz(raw_dir / ARCHIVE_NAME, files)
    record = {
        "synthetic": True,
        "generator": __name__,
        "task": SOURCE_NAME,
        "seed": seed,
        "sizes": counts,
        "layout": f"{HUB_REPO_ID}: {ARCHIVE_NAME}",
    }
    hub.write_source_record(raw_dir, record)
    return record
