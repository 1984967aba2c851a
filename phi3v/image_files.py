"""Images other machines hand us, as checked RGB PIL images: files that decode completely, 16-bit greyscale
scaled to 8 bits, transparency onto white; anything else is one UserError naming the image and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.image_transforms import convert_to_rgb

from phi3v.errors import UserError
from phi3v.model_sizes import CLIP_VIT_L_14_336, MAX_NUM_CROPS


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file, check that it decodes completely, and return it as RGB."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist: check the path (jsonl image paths are relative to images/).")
    try:
        with Image.open(path) as probe:
            probe.verify()  # catches corrupt headers and checksums without decoding pixels
        image = Image.open(path)
        image.load()  # decodes pixels: catches truncated files
    except Image.DecompressionBombError as error:  # not an OSError: PIL refuses it before decoding
        raise UserError(f"image {path} is too large to decode safely ({error}): downscale it (the model sees at most "
                        f"{MAX_NUM_CROPS} crops of {CLIP_VIT_L_14_336['image_size']} px) or remove it.") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"image {path} cannot be read ({error}): replace or remove the file.") from error
    return to_rgb(image, str(path))


def to_rgb(image: Image.Image, name: str, composite_alpha: bool = True) -> Image.Image:
    """Decode and convert to RGB (transparency onto white, as transformers does); reject broken images."""
    if not isinstance(image, Image.Image):
        raise UserError(f"{name} is a {type(image).__name__}, not a PIL image: pass PIL images or image paths.")
    if image.width == 0 or image.height == 0:
        raise UserError(f"{name} has zero size ({image.width}x{image.height}): replace or remove it.")
    try:
        image.load()
        image = eight_bit(image, name)
        if image.mode == "RGB" and "transparency" not in image.info:
            return image
        if not composite_alpha:
            return image.convert("RGB")
        return Image.fromarray(convert_to_rgb(image, return_numpy=True))
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"{name} cannot be decoded or converted to RGB ({error}): replace or remove it.") from error


def eight_bit(image: Image.Image, name: str) -> Image.Image:
    """A 16-bit greyscale image (PNG, TIFF) scaled to 8 bits; 32-bit integer or float images refused.

    By hand: PIL's conversion to RGB clips 16-bit values at 255 instead of scaling them, which turns a
    16-bit scan almost entirely white; 32-bit modes carry no range to scale from.
    """
    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)  # (H, W) in 0..65535
        return Image.fromarray(np.round(values / 257).astype(np.uint8))  # mode L
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "32-bit floating-point"
        raise UserError(f"{name} is a {kind} greyscale image (mode {image.mode}), whose range cannot be known: "
                        "save it as an 8-bit or 16-bit image (PNG) or as RGB.")
    return image


def image_name(image, default: str) -> str:
    """How to name an image in an error: its file path when it has one."""
    if isinstance(image, (str, os.PathLike)):
        return f"image {image}"
    filename = getattr(image, "filename", "")
    return f"{default} ({filename})" if filename else default
