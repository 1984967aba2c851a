"""Video generators for the demo's stand-in of UCF-101 and its pre-training corpus: a block moving across frames.

A clip is a square block of one colour crossing a dark background in one direction; `encode_avi` and
`write_tar_gz` store clips as reproducible bytes (the same seed gives the same archive).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path, PurePosixPath

import av
import numpy as np

from phi3v.data.sources.synthetic_images import COLOURS
from phi3v.files import atomic_path

# The block's colours: the demo tasks' six plus four more, one per class of the UCF-101 stand-in.
BLOCK_COLOURS = {
    **COLOURS,
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
FRAME_SIZE = (80, 60)  # (width, height): 4:3 like the real 320x240 clips
CLIP_LENGTHS = (12, 20)  # frames a clip, inclusive
FPS = 10


def moving_block_frames(
    rng: np.random.Generator,
    colour: tuple[int, int, int],
    direction: tuple[int, int],
    num_frames: int,
    size: tuple[int, int] = FRAME_SIZE,
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


def encode_avi(frames: list[np.ndarray], fps: int = FPS) -> bytes:
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
