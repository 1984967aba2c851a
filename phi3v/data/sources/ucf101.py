"""UCF-101 (10-class subset): download from the hub, synthesize a look-alike, convert to the recipe's format.

The raw folder holds `UCF101_subset.tar.gz` with `UCF101_subset/{train,val,test}/<Class>/*.avi`, whether it
came from the hub or from `synthesize_ucf101`. Conversion samples 8 frames a video with PyAV and writes
`ucf101_<split>.jsonl` plus `images/<split>/<Class>/<video_stem>.<k>.jpg`.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable

import av
import numpy as np
from PIL import Image

from phi3v.data.sources import hub
from phi3v.data.sources.common import record_id, write_jsonl
from phi3v.files import atomic_output_dir, atomic_path
from phi3v.data.sources.synthetic_images import COLOURS as TASK_COLOURS
from phi3v.errors import UserError

logger = logging.getLogger(__name__)

HUB_REPO_ID = "sayakpaul/ucf101-subset"
ARCHIVE_NAME = "UCF101_subset.tar.gz"
ARCHIVE_ROOT = "UCF101_subset"
SOURCE_NAME = "ucf101"
SPLITS = ("train", "val", "test")
FRAMES_PER_VIDEO = 8

# The synthetic subset: one class per colour of a moving block, each with its own direction of motion.
# Colours: the demo tasks' six plus four more, one per class.
COLOURS = {
    **TASK_COLOURS,
    "magenta": (215, 50, 200),
    "cyan": (40, 205, 215),
    "white": (245, 245, 245),
    "brown": (130, 80, 40),
}
# direction name -> (dx, dy) unit steps in image coordinates (y grows downwards)
DIRECTIONS = {
    "left to right": (1, 0),
    "right to left": (-1, 0),
    "top to bottom": (0, 1),
    "bottom to top": (0, -1),
    "top left to bottom right": (1, 1),
    "bottom right to top left": (-1, -1),
    "top right to bottom left": (-1, 1),
    "bottom left to top right": (1, -1),
}
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
SYNTHETIC_FRAME_SIZE = (80, 60)  # (width, height): 4:3 like the real 320x240 clips
SYNTHETIC_FRAME_RANGE = (12, 20)  # frames a clip, inclusive
SYNTHETIC_FPS = 10


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
        "conversations": hub.conversation([(question, class_name)], frames),
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


def moving_block_frames(
    rng: np.random.Generator,
    colour: tuple[int, int, int],
    direction: tuple[int, int],
    num_frames: int,
    size: tuple[int, int] = SYNTHETIC_FRAME_SIZE,
) -> list[np.ndarray]:
    """Frames (H, W, 3) uint8 of a square block of `colour` crossing a dark background along `direction`."""
    width, height = size
    side = int(rng.integers(height // 5, height // 3 + 1))
    background = np.array([int(rng.integers(25, 70))] * 3, dtype=np.uint8)
    # the block travels most of the free span along each moving axis; a static axis gets a random offset
    starts, ends = [], []
    for step, extent in zip(direction, (width, height)):
        free = extent - side
        travel = int(free * rng.uniform(0.6, 0.9)) if step else 0
        low = int(rng.integers(0, free - travel + 1))
        start, end = (free - low, free - low - travel) if step < 0 else (low, low + travel)
        starts.append(start)
        ends.append(end)
    frames = []
    for t in np.linspace(0.0, 1.0, num_frames):
        x = round(starts[0] + t * (ends[0] - starts[0]))
        y = round(starts[1] + t * (ends[1] - starts[1]))
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:] = background
        frame[y : y + side, x : x + side] = colour
        frames.append(frame)
    return frames


def encode_avi(frames: list[np.ndarray], fps: int = SYNTHETIC_FPS) -> bytes:
    """Encode RGB frames (H, W, 3) as an MPEG-4 Part 2 .avi; single-threaded so the bytes are reproducible."""
    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 500_000
        stream.codec_context.thread_count = 1
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder
    return buffer.getvalue()


def _tar_entry(name: str, size: int | None = None) -> tarfile.TarInfo:
    """A tar entry with fixed owner, mode and time, so the archive bytes depend only on the contents."""
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if size is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = size, 0o644
    return info


def write_tar_gz(path: Path, files: dict[str, bytes]) -> None:
    """Write `files` (archive name -> bytes, with their parent folders) as a reproducible .tar.gz, atomically."""
    top = PurePosixPath(".")
    folders = sorted({parent.as_posix() for name in files for parent in PurePosixPath(name).parents if parent != top})
    with atomic_path(path) as tmp_path, open(tmp_path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for folder in folders:
                    tar.addfile(_tar_entry(folder))
                for name in sorted(files):
                    tar.addfile(_tar_entry(name, len(files[name])), io.BytesIO(files[name]))


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
                num_frames = int(rng.integers(SYNTHETIC_FRAME_RANGE[0], SYNTHETIC_FRAME_RANGE[1] + 1))
                frames = moving_block_frames(rng, COLOURS[colour_name], DIRECTIONS[direction_name], num_frames)
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
