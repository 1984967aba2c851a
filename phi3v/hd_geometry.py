"""Where an image lands in Phi-3.5-vision's HD layout, and how many image tokens it becomes: plain
arithmetic without torch or transformers, so that jobs which only count (dataset statistics) stay light."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

from phi3v.errors import UserError
from phi3v.model_sizes import CLIP_VIT_L_14_336, image_token_count

PATCH_SIZE = CLIP_VIT_L_14_336["patch_size"]
PATCH_MERGE = 2  # the projector merges 2x2 patches into one token
DEFAULT_CROP_SIZE = 336


@dataclass(frozen=True)
class HDGeometry:
    """Where an image lands in the HD canvas. Sizes in landscape orientation except `size`."""

    transposed: bool  # the image was taller than wide and is processed transposed
    resized_height: int
    resized_width: int  # a multiple of the crop size
    padded_height: int  # resized_height padded with white to a multiple of the crop size
    top: int  # white rows above the image

    @property
    def size(self) -> tuple[int, int]:
        """The padded HD size (height, width) in the image's own orientation (what `image_sizes` holds)."""
        if self.transposed:
            return self.resized_width, self.padded_height
        return self.padded_height, self.resized_width


def hd_geometry(height: int, width: int, num_crops: int, crop_size: int) -> HDGeometry:
    """The reference HD layout: the most crops `scale * ceil(scale / ratio) <= num_crops` allows."""
    if not (isinstance(height, Integral) and isinstance(width, Integral) and height > 0 and width > 0):
        raise UserError(f"image size {width!r}x{height!r} (width x height) is not valid: both must be positive integers.")
    height, width = int(height), int(width)
    transposed = width < height
    if transposed:
        height, width = width, height
    # Float arithmetic on purpose: the reference computes ratio, scale and height this way.
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    resized_width = scale * crop_size
    # Extreme ratios (wider than resized_width:1) would round to zero rows; keep one.
    resized_height = max(1, int(resized_width / ratio))
    padded_height = -(-resized_height // crop_size) * crop_size
    top = (padded_height - resized_height) // 2
    return HDGeometry(transposed, resized_height, resized_width, padded_height, top)


def tokens_per_side(crop_size: int) -> int:
    """Image tokens along one side of a crop."""
    return crop_size // (PATCH_SIZE * PATCH_MERGE)


def num_image_tokens(height: int, width: int, num_crops: int, crop_size: int = DEFAULT_CROP_SIZE) -> int:
    """Image tokens for an image of `height x width` pixels at `num_crops`: every sub-crop and the global
    crop, one `glb_GN`, one `sub_GN` per grid row."""
    hd_height, hd_width = hd_geometry(height, width, num_crops, crop_size).size
    return image_token_count(hd_height // crop_size, hd_width // crop_size, tokens_per_side(crop_size))
