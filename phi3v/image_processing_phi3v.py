"""Phi-3.5-vision's image processor: the HD transform, its crops and their normalisation.

Each image becomes `1 + h_c * w_c` crops of `S x S` pixels: a global view plus row-major tiles of the image
resized into an HD canvas of whole crops and padded white. `preprocess` returns them with each image's HD
size and image-token count (what the processor expands an `<|image_k|>` tag into).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs
from transformers.utils import IMAGE_PROCESSOR_NAME

from phi3v.errors import UserError
from phi3v.image_files import image_name, load_image, to_rgb
from phi3v.model_files import check_source
from phi3v.hd_geometry import hd_geometry, tokens_per_side
from phi3v.model_sizes import MAX_NUM_CROPS, image_token_count

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_PROCESSOR_FILE = IMAGE_PROCESSOR_NAME  # preprocessor_config.json, as in the release
# Keys of the official preprocessor_config.json that describe the file rather than the transform.
METADATA_KEYS = {"auto_map", "image_processor_type", "processor_class"}
IMAGE_PROCESSOR_SETTINGS = ("num_crops", "num_img_tokens", "image_mean", "image_std", "do_convert_rgb", "crop_size")


def check_num_crops(num_crops, where: str = "num_crops") -> int:
    """Return `num_crops` if it is an integer in 1..MAX_NUM_CROPS, else raise a UserError naming `where`."""
    if isinstance(num_crops, bool) or not isinstance(num_crops, int) or not 1 <= num_crops <= MAX_NUM_CROPS:
        raise UserError(
            f"{where} = {num_crops!r} is not valid: use an integer from 1 to {MAX_NUM_CROPS} "
            "(the recipe uses 16 for single images and 4 for video frames)."
        )
    return num_crops


class Phi3VImageProcessorKwargs(ImagesKwargs, total=False):
    """The settings of preprocessor_config.json beyond transformers' common image kwargs."""

    num_crops: int
    num_img_tokens: int
    crop_size: int


class Phi3VImageProcessor(BaseImageProcessor):
    """The HD transform of Phi-3.5-vision; `preprocessor_config.json` is read and written by transformers."""

    valid_kwargs = Phi3VImageProcessorKwargs
    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops: int = 4,
        num_img_tokens: int | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        do_convert_rgb: bool = True,
        crop_size: int = 336,
        **file_keys,
    ):
        super().__init__()
        unknown = sorted(set(file_keys) - METADATA_KEYS)
        if unknown:
            raise UserError(
                f"unknown key(s) {unknown}; the known keys are {sorted(set(IMAGE_PROCESSOR_SETTINGS) | METADATA_KEYS)}."
            )
        self.num_crops = check_num_crops(num_crops)
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size <= 0 or crop_size % 28:
            raise UserError(
                f"crop_size = {crop_size!r} is not valid: use a positive multiple of 28 "
                "(CLIP's 14-px patches merged 2x2; 336 for the real model)."
            )
        self.crop_size = crop_size
        self.tokens_per_side = tokens_per_side(crop_size)
        if num_img_tokens is not None and num_img_tokens != self.tokens_per_side**2:
            raise UserError(
                f"num_img_tokens = {num_img_tokens!r} does not match crop_size {crop_size} "
                f"(({crop_size} / 28)^2 = {self.tokens_per_side ** 2}): fix one of the two."
            )
        self.num_img_tokens = self.tokens_per_side**2
        for key, values in (("image_mean", image_mean), ("image_std", image_std)):
            if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
                raise UserError(f"{key} = {values!r} is not valid: give three numbers, one per RGB channel.")
        if min(image_std) <= 0:
            raise UserError(f"image_std = {list(image_std)!r} is not valid: every value must be positive.")
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.do_convert_rgb = bool(do_convert_rgb)
        self._mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)

    # -- configuration files ------------------------------------------------------------------

    def to_dict(self) -> dict:
        """preprocessor_config.json: the release's keys (`save_pretrained` is transformers' own)."""
        return {
            "image_processor_type": type(self).__name__,
            "processor_class": "Phi3VProcessor",
            **{key: getattr(self, key) for key in IMAGE_PROCESSOR_SETTINGS},
        }

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "Phi3VImageProcessor":
        """A folder or hub id (`revision=` too); keyword settings (e.g. `num_crops=16`) override the file's."""
        source = check_source(pretrained_model_name_or_path, **kwargs)
        path = f"{source.rstrip('/')}/{IMAGE_PROCESSOR_FILE}"
        kwargs.pop("trust_remote_code", None)  # nothing remote to trust: the code is here
        try:
            return super().from_pretrained(source, **kwargs)
        except OSError as error:
            if "not a valid JSON" in str(error):
                raise UserError(f"{path} is not valid JSON ({error}): restore it from the model's source.") from error
            raise UserError(f"{path} is missing: a model folder needs the image processor's {IMAGE_PROCESSOR_FILE}.") from error
        except UserError as error:
            raise UserError(f"{path}: {error}") from None

    @classmethod
    def from_dict(cls, image_processor_dict: dict, **kwargs) -> "Phi3VImageProcessor":
        if not isinstance(image_processor_dict, dict):
            raise UserError(f"{IMAGE_PROCESSOR_FILE} must hold a JSON object, not {type(image_processor_dict).__name__}.")
        overrides = {key: kwargs.pop(key) for key in IMAGE_PROCESSOR_SETTINGS if key in kwargs}
        return super().from_dict({**image_processor_dict, **overrides}, **kwargs)

    # -- the transform ------------------------------------------------------------------------

    def hd_size(self, height: int, width: int, num_crops: int | None = None) -> tuple[int, int]:
        """The padded HD size (height, width) an image of this size is transformed to."""
        num_crops = self.num_crops if num_crops is None else check_num_crops(num_crops)
        return hd_geometry(height, width, num_crops, self.crop_size).size

    def image_token_count(self, hd_height: int, hd_width: int) -> int:
        """Tokens for an HD image: tiles + global crop (g*g each), one glb_GN, one sub_GN per grid row."""
        return image_token_count(hd_height // self.crop_size, hd_width // self.crop_size, self.tokens_per_side)

    def num_image_tokens(self, height: int, width: int, num_crops: int | None = None) -> int:
        """Image tokens for an image of `height x width` pixels at `num_crops`."""
        return self.image_token_count(*self.hd_size(height, width, num_crops))

    def hd_transform(self, image: Image.Image, num_crops: int) -> torch.Tensor:
        """Resize into the HD layout, pad white, normalise: (3, H, W) float32, H and W multiples of S."""
        geometry = hd_geometry(image.height, image.width, num_crops, self.crop_size)
        if geometry.transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
        resized = image.resize((geometry.resized_width, geometry.resized_height), Image.Resampling.BILINEAR)
        # White padding before normalisation, so padded pixels normalise to (1 - mean) / std.
        canvas = np.full((geometry.padded_height, geometry.resized_width, 3), 255, dtype=np.uint8)
        canvas[geometry.top : geometry.top + geometry.resized_height] = np.asarray(resized)
        pixels = torch.from_numpy(canvas).permute(2, 0, 1)  # (3, H, W) landscape
        if geometry.transposed:
            pixels = pixels.transpose(1, 2)
        # Contiguous uint8 first: the float ops below are several times slower on strided memory.
        pixels = pixels.contiguous().to(torch.float32).div_(255)
        return pixels.sub_(self._mean).div_(self._std)

    def crops(self, hd_image: torch.Tensor) -> torch.Tensor:
        """[global, tiles...] of an HD image: (1 + h_c * w_c, 3, S, S)."""
        S = self.crop_size
        _, height, width = hd_image.shape
        # Bicubic without antialiasing, on the normalised image, as the reference does.
        global_crop = F.interpolate(hd_image[None], size=(S, S), mode="bicubic", align_corners=False)
        tiles = hd_image.reshape(3, height // S, S, width // S, S)  # (3, h_c, S, w_c, S)
        tiles = tiles.permute(1, 3, 0, 2, 4).reshape(-1, 3, S, S)  # (h_c * w_c, 3, S, S) row-major
        return torch.cat([global_crop, tiles], dim=0)

    def prepare_image(self, image, name: str) -> Image.Image:
        """A path or PIL image -> a checked RGB PIL image."""
        if isinstance(image, (str, os.PathLike)):
            return load_image(image)
        return to_rgb(image, name, composite_alpha=self.do_convert_rgb)

    def preprocess(
        self, images, num_crops: int | None = None, names: Sequence[str] | None = None
    ) -> BatchFeature:
        """Images (PIL or paths) -> `pixel_values` (total_crops, 3, S, S), `image_sizes` (n, 2), `num_img_tokens`."""
        num_crops = self.num_crops if num_crops is None else check_num_crops(num_crops)
        if isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images]
        names = names or [image_name(image, f"image {i + 1}") for i, image in enumerate(images)]
        crops, sizes = [], []
        for image, name in zip(images, names):
            hd_image = self.hd_transform(self.prepare_image(image, name), num_crops)
            crops.append(self.crops(hd_image))
            sizes.append(hd_image.shape[1:])
        S = self.crop_size
        pixel_values = torch.cat(crops) if crops else torch.zeros(0, 3, S, S)
        image_sizes = torch.tensor(sizes, dtype=torch.long).view(-1, 2)
        num_img_tokens = [self.image_token_count(h, w) for h, w in sizes]
        return BatchFeature(
            {"pixel_values": pixel_values, "image_sizes": image_sizes, "num_img_tokens": num_img_tokens}
        )

    __call__ = preprocess
