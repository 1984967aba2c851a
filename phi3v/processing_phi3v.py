"""Phi-3.5-vision processing: the HD image transform, image tags in prompts, chat format, batching.

The image processor turns each image into `1 + h_c * w_c` crops of `S x S` pixels (a global view
plus row-major tiles of the padded "HD" image); the processor replaces each `<|image_k|>` tag with
as many image tokens as the model will produce features for that image.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_transforms import convert_to_rgb
from transformers.processing_utils import ImagesKwargs, ProcessorMixin
from transformers.utils import IMAGE_PROCESSOR_NAME

from phi3v.configuration_phi3v import image_token_count
from phi3v.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_NUM_CROPS = 16
# CLIP patches are 14 px and the image embedding merges 2x2 patches into one token.
PATCH_SIZE = 14
PATCH_MERGE = 2

IMAGE_PROCESSOR_FILE = IMAGE_PROCESSOR_NAME  # preprocessor_config.json, as in the release
# Keys of the official preprocessor_config.json that describe the file rather than the transform.
METADATA_KEYS = {"auto_map", "image_processor_type", "processor_class"}
IMAGE_PROCESSOR_SETTINGS = ("num_crops", "num_img_tokens", "image_mean", "image_std", "do_convert_rgb", "crop_size")

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
IMAGE_TOKEN = "<|image|>"
# Id of the image placeholder token in other ports when the tokenizer has no `<|image|>` entry.
DEFAULT_IMAGE_TOKEN_ID = 32044
IGNORE_INDEX = -100  # label of positions the loss skips (transformers' convention)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
PAD = "<|endoftext|>"
END = "<|end|>"
CHAT_SPECIAL_TOKENS = ["<|assistant|>", "<|system|>", END, "<|user|>", IMAGE_TOKEN]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\n' -}}"
    "{% endif %}"
)
# The processor's template: the release's format for string content; for transformers' multimodal content
# ([{"type": "image"}, {"type": "text", "text": ...}]) each image becomes `<|image_k|>\n`, numbered over the chat.
PROCESSOR_CHAT_TEMPLATE = (
    "{% set image = namespace(count=0) %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{% set image.count = image.count + 1 %}"
    "{{ '<|image_' + image.count|string + '|>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\n' -}}"
    "{% endif %}"
)


# ----------------------------------------------------------------------------------------------
# Images


def check_num_crops(num_crops, where: str = "num_crops") -> int:
    """Return `num_crops` if it is an integer in 1..16, else raise a UserError naming `where`."""
    if isinstance(num_crops, bool) or not isinstance(num_crops, int) or not 1 <= num_crops <= MAX_NUM_CROPS:
        raise UserError(
            f"{where} = {num_crops!r} is not valid: use an integer from 1 to {MAX_NUM_CROPS} "
            "(the recipe uses 16 for single images and 4 for video frames)."
        )
    return num_crops


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
        raise UserError(f"image {path} is too large to decode safely ({error}): downscale it "
                        "(the model sees at most 16 crops of 336 px) or remove it.") from None
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


def is_hub_id(name: str) -> bool:
    """A hub repository id ("org/name") rather than a local path."""
    if os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


HUB_OPTIONS = ("revision", "cache_dir", "token", "local_files_only")  # from_pretrained keywords that find a hub model


def model_folder(source, **options) -> Path:
    """The local folder of a model folder or hub id (the hub cache's snapshot, its config.json fetched or found
    there offline); a local path that does not exist, or a hub model that cannot be had, is refused here.
    `options`: from_pretrained's keywords; those in `HUB_OPTIONS` are used."""
    from phi3v.model_files import hub_model_folder

    source = str(source)
    if os.path.isdir(source):
        return Path(source)
    if not is_hub_id(source):
        raise UserError(f"model folder {source} does not exist: build or download the model first (or give a hub id).")
    return hub_model_folder(source, **{key: options[key] for key in HUB_OPTIONS if options.get(key) is not None})


def check_source(source, **options) -> str:
    """A local model folder or hub id, as a string, once `model_folder` found it."""
    model_folder(source, **options)
    return str(source)


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
        self.tokens_per_side = crop_size // (PATCH_SIZE * PATCH_MERGE)
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


# ----------------------------------------------------------------------------------------------
# Processor


def image_tag_numbers(text: str) -> list[int]:
    """The k of every `<|image_k|>` in `text`, in order of appearance."""
    return [int(k) for k in IMAGE_TAG.findall(text)]


def check_image_tags(numbers: list[int], num_images: int, where: str) -> None:
    """Tags must be `<|image_1|>` .. `<|image_n|>`, once each, in order, for n images."""
    fix = "tags are <|image_1|> .. <|image_n|> for n images, each once, in order"
    seen = set()
    for position, k in enumerate(numbers):
        if k == 0:
            raise UserError(f"{where}: <|image_0|> is not a valid tag; images are numbered from 1 ({fix}).")
        if k > num_images:
            raise UserError(f"{where}: <|image_{k}|> refers to image {k}, but {num_images} image(s) were given ({fix}).")
        if k in seen:
            raise UserError(f"{where}: <|image_{k}|> appears more than once ({fix}).")
        if k != position + 1:
            raise UserError(f"{where}: <|image_{k}|> comes where <|image_{position + 1}|> is expected ({fix}).")
        seen.add(k)
    if len(numbers) < num_images:
        missing = ", ".join(f"<|image_{k}|>" for k in range(len(numbers) + 1, num_images + 1))
        raise UserError(f"{where}: {num_images} image(s) were given but the text lacks {missing} ({fix}).")


class Phi3VProcessor(ProcessorMixin):
    """Tokenizer + image processor: image tags to image tokens, chat format, padded batches."""

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer, image_token_id: int | None = None,
                 chat_template: str | None = None):
        if tokenizer.pad_token_id is None:
            raise UserError(f"the tokenizer has no pad token: set pad_token to {PAD} in tokenizer_config.json.")
        # The release's text-only template (saved as chat_template.jinja by the tokenizer) renders string content
        # exactly as PROCESSOR_CHAT_TEMPLATE does, which also takes transformers' multimodal content.
        if chat_template in (None, CHAT_TEMPLATE):
            chat_template = PROCESSOR_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        if image_token_id is None:
            image_token_id = tokenizer.get_vocab().get(IMAGE_TOKEN, DEFAULT_IMAGE_TOKEN_ID)
        self.image_token_id = image_token_id
        self.pad_token_id = tokenizer.pad_token_id

    @property
    def stop_token_ids(self) -> list[int]:
        """Where generation ends: `<|end|>` closes an assistant turn; `<|endoftext|>` and EOS too."""
        vocab = self.tokenizer.get_vocab()
        ids = [vocab.get(END), vocab.get(PAD), self.tokenizer.eos_token_id]
        return list(dict.fromkeys(i for i in ids if i is not None))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, image_token_id: int | None = None,
                        **kwargs) -> "Phi3VProcessor":
        """A folder or hub id (`revision=`, `cache_dir=` ...) through transformers' loader, never remote code;
        image-processor settings given here (e.g. `num_crops=16`) override the folder's."""
        source = check_source(pretrained_model_name_or_path, **kwargs)
        settings = {key: kwargs.pop(key) for key in IMAGE_PROCESSOR_SETTINGS if key in kwargs}
        kwargs["trust_remote_code"] = False
        try:
            processor = super().from_pretrained(source, **kwargs)
        except UserError as error:
            raise UserError(f"{source}: {error}") from None
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load the processor from {source} ({error}): a model folder needs "
                            f"{IMAGE_PROCESSOR_FILE} and the tokenizer files.") from error
        if settings:
            saved = {k: v for k, v in processor.image_processor.to_dict().items() if k != "num_img_tokens"}  # derived
            try:
                processor.image_processor = Phi3VImageProcessor(**{**saved, **settings})
            except UserError as error:
                raise UserError(f"Phi3VProcessor.from_pretrained({source!r}): {error}") from None
        if image_token_id is not None:
            processor.image_token_id = image_token_id
        return processor

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> list[str]:
        """The release's file set: preprocessor_config.json (these settings, num_crops included) and the tokenizer.

        Each part is saved by transformers; ProcessorMixin's own save would add a processor_config.json, which the
        release does not have and which loaders would read before preprocessor_config.json.
        """
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer._set_processor_class(type(self).__name__)  # tokenizer_config.json names it, as the release's
        files = list(self.image_processor.save_pretrained(save_directory))
        return files + list(self.tokenizer.save_pretrained(save_directory))

    # -- text ---------------------------------------------------------------------------------

    def generation_prompt(self, user: str) -> str:
        """`<|user|>\\n{user}<|end|>\\n<|assistant|>\\n`: the chat-formatted prompt of one user turn."""
        return self.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True)

    def tokenize_with_images(self, text: str, image_token_counts: Sequence[int]) -> list[int]:
        """Token ids of `text` with each `<|image_k|>` replaced by `image_token_counts[k-1]` image tokens.

        Every text piece between tags is tokenized on its own with BOS, as the reference processor does.
        """
        parts = IMAGE_TAG.split(text)  # [piece, k, piece, k, ..., piece]
        pieces, numbers = parts[0::2], [int(k) for k in parts[1::2]]
        piece_ids = self.tokenizer(pieces)["input_ids"]
        ids = list(piece_ids[0])
        for k, next_piece in zip(numbers, piece_ids[1:]):
            ids += [self.image_token_id] * image_token_counts[k - 1]
            ids += next_piece
        return ids

    # -- batches ------------------------------------------------------------------------------

    def _images(self, images, num_crops, where: str) -> BatchFeature:
        names = [image_name(image, f"{where}, image {k + 1}") for k, image in enumerate(images)]
        return self.image_processor.preprocess(images, num_crops=num_crops, names=names)

    def __call__(
        self,
        text: str | list[str],
        images=None,
        padding_side: str = "right",
        num_crops: int | None = None,
        return_tensors: str = "pt",
        videos=None,
        audio=None,
        **unsupported,
    ) -> BatchFeature:
        """Prompts (+ their images) -> BatchFeature(input_ids, attention_mask[, pixel_values, image_sizes]).

        `videos` and `audio` exist for transformers' `apply_chat_template`, which passes them (as None)."""
        unsupported.pop("add_special_tokens", None)  # pieces get BOS as the reference does; templates add none
        if videos is not None or audio is not None or unsupported:
            names = sorted(unsupported) + [k for k, v in (("videos", videos), ("audio", audio)) if v is not None]
            raise UserError(f"Phi3VProcessor does not take {names}: give text, images, padding_side, num_crops; "
                            "video frames go in as images.")
        if return_tensors != "pt":
            raise UserError(f"return_tensors = {return_tensors!r} is not supported: use 'pt'.")
        if padding_side not in ("right", "left"):
            raise UserError(f"padding_side = {padding_side!r} is not valid: use 'right' (training) or 'left' (generation).")
        if num_crops is not None:
            check_num_crops(num_crops)
        texts, images_per_text = self._pair_texts_and_images(text, images)

        sequences, pixel_values, image_sizes = [], [], []
        for i, (sample_text, sample_images) in enumerate(zip(texts, images_per_text)):
            where = f"sample {i}"
            check_image_tags(image_tag_numbers(sample_text), len(sample_images), where)
            processed = self._images(sample_images, num_crops, where)
            sequences.append(self.tokenize_with_images(sample_text, processed["num_img_tokens"]))
            if sample_images:
                pixel_values.append(processed["pixel_values"])
                image_sizes.append(processed["image_sizes"])

        input_ids, attention_mask = self.pad(sequences, padding_side)
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
        if pixel_values:
            data["pixel_values"] = torch.cat(pixel_values)
            data["image_sizes"] = torch.cat(image_sizes)
        return BatchFeature(data)

    @staticmethod
    def _pair_texts_and_images(text, images) -> tuple[list[str], list[list]]:
        if isinstance(text, str):
            if images is not None and not isinstance(images, (list, tuple)):
                images = [images]
            if images and len(images) == 1 and isinstance(images[0], (list, tuple)):
                images = images[0]  # transformers' per-prompt nesting, as apply_chat_template passes it
            if images and isinstance(images[0], (list, tuple)):
                raise UserError("one prompt was given with a nested image list: pass images=[img, ...] for one prompt.")
            return [text], [list(images or [])]
        if not isinstance(text, (list, tuple)) or not all(isinstance(t, str) for t in text):
            raise UserError(f"text must be a string or a list of strings, not {type(text).__name__}.")
        if images is None:
            return list(text), [[] for _ in text]
        if len(images) != len(text) or not all(isinstance(x, (list, tuple)) for x in images):
            raise UserError(
                f"{len(text)} prompts need images as a list of {len(text)} lists (one per prompt, [] for none)."
            )
        return list(text), [list(x) for x in images]

    def pad(self, sequences: list[list[int]], padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad to the longest with `pad_token_id`: (B, L) input_ids and attention_mask."""
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            start = 0 if padding_side == "right" else length - len(sequence)
            input_ids[row, start : start + len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, start : start + len(sequence)] = 1
        return input_ids, attention_mask

    # -- training examples --------------------------------------------------------------------

    def encode_example(self, turns: list[dict], images: Sequence = (), num_crops: int | None = None) -> dict:
        """A conversation -> 1-D `input_ids` and `labels` (prompts -100), `pixel_values`, `image_sizes`.

        Each turn: prompt `<|user|>\\n{user}<|end|>\\n<|assistant|>\\n` (masked, images inside), then
        target `{assistant}<|end|>\\n<|endoftext|>` (supervised, no BOS). Tags number images over the
        whole conversation.
        """
        if not isinstance(turns, (list, tuple)) or not turns:
            raise UserError(f"turns must be a non-empty list of {{'user', 'assistant'}} dicts, got {turns!r:.80}.")
        for t, turn in enumerate(turns):
            if not isinstance(turn, dict) or not all(isinstance(turn.get(k), str) for k in ("user", "assistant")):
                raise UserError(f"turn {t} must be a dict with string 'user' and 'assistant', got {turn!r:.80}.")
        images = list(images or [])
        tags = [k for turn in turns for k in image_tag_numbers(turn["user"])]
        check_image_tags(tags, len(images), "conversation")
        processed = self._images(images, num_crops, "conversation")

        input_ids, labels = [], []
        for turn in turns:
            prompt = self.tokenize_with_images(self.generation_prompt(turn["user"]), processed["num_img_tokens"])
            target_text = f"{turn['assistant']}{END}\n{PAD}"
            target = self.tokenizer(target_text, add_special_tokens=False)["input_ids"]
            input_ids += prompt + target
            labels += [IGNORE_INDEX] * len(prompt) + target
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": processed["pixel_values"],
            "image_sizes": processed["image_sizes"],
        }


def check_compatible(model, processor: Phi3VProcessor, where: str) -> None:
    """A model (or its config) and the processor that feeds it must agree on the image token and the crop size."""
    config = getattr(model, "config", model)
    if processor.image_token_id != config.image_token_id:
        raise UserError(
            f"{where}: the processor's image token id is {processor.image_token_id} (the tokenizer's '{IMAGE_TOKEN}') "
            f"but the model's config.json has image_token_id {config.image_token_id}: set image_token_id in "
            "config.json (or pass image_token_id= to from_pretrained) to the tokenizer's id."
        )
    if processor.image_processor.crop_size != config.crop_size:
        raise UserError(
            f"{where}: {IMAGE_PROCESSOR_FILE} has crop_size {processor.image_processor.crop_size} but the model's "
            f"CLIP takes {config.crop_size}-px crops: make crop_size equal to vision_config.image_size."
        )
