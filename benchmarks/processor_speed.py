"""Image-processor throughput on one core: a 1700x2200 document page at num_crops 16.

    python benchmarks/processor_speed.py [--repeats 20] [--num-crops 16]

Prints one line: median images per second over the repeats (one image per repeat).
"""

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from phi3v.image_processing_phi3v import Phi3VImageProcessor


def page_image(width: int = 1700, height: int = 2200, seed: int = 0) -> Image.Image:
    """A noisy page-sized RGB image (noise defeats any shortcut on flat colours)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def seconds_per_image(processor: Phi3VImageProcessor, image: Image.Image, num_crops: int, repeats: int) -> list[float]:
    processor(image, num_crops=num_crops)  # warm-up: first calls allocate and load kernels
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        processor(image, num_crops=num_crops)
        timings.append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--num-crops", type=int, default=16)
    args = parser.parse_args()

    torch.set_num_threads(1)
    processor = Phi3VImageProcessor(num_crops=args.num_crops)
    image = page_image()
    timings = seconds_per_image(processor, image, args.num_crops, args.repeats)
    median = statistics.median(timings)
    crops = processor(image)["pixel_values"].shape[0]
    print(
        f"processor: {1 / median:.2f} img/s (median of {args.repeats}, {median * 1000:.1f} ms/img), "
        f"1700x2200 page, num_crops {args.num_crops} -> {crops} crops of 336 px, 1 thread"
    )


if __name__ == "__main__":
    main()
