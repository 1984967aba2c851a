"""Phi-3.5-vision processing: the HD image transform, image tags in prompts, chat format, batching.

The image processor turns each image into `1 + h_c * w_c` crops of `S x S` pixels (a global view
plus row-major tiles of the padded "HD" image); the processor replaces each `<|image_k|>` tag with
as many image tokens as the model will produce features for that image.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, BatchFeature, LlamaTokenizer
from transformers.image_transforms import convert_to_rgb

from phi3v.configuration_phi3v import image_token_count
from phi3v.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_NUM_CROPS = 16
# CLIP patches are 14 px and the image embedding merges 2x2 patches into one token.
PATCH_SIZE = 14
PATCH_MERGE = 2

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# Keys of the official preprocessor_config.json that describe the file rather than the transform.
METADATA_KEYS = {"auto_map", "image_processor_type", "processor_class"}

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
IMAGE_TOKEN = "<|image|>"
# Id of the image placeholder token in other ports when the tokenizer has no `<|image|>` entry.
DEFAULT_IMAGE_TOKEN_ID = 32044
IGNORE_INDEX = -100

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
        if image.mode == "RGB" and "transparency" not in image.info:
            return image
        if not composite_alpha:
            return image.convert("RGB")
        return Image.fromarray(convert_to_rgb(image, return_numpy=True))
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"{name} cannot be decoded or converted to RGB ({error}): replace or remove it.") from error


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


class Phi3VImageProcessor:
    """The HD transform of Phi-3.5-vision, with `preprocessor_config.json` load/save."""

    def __init__(
        self,
        num_crops: int = 4,
        num_img_tokens: int | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        do_convert_rgb: bool = True,
        crop_size: int = 336,
    ):
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
        return {
            "image_processor_type": type(self).__name__,
            "processor_class": "Phi3VProcessor",
            "num_crops": self.num_crops,
            "num_img_tokens": self.num_img_tokens,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "do_convert_rgb": self.do_convert_rgb,
            "crop_size": self.crop_size,
        }

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / IMAGE_PROCESSOR_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **overrides) -> "Phi3VImageProcessor":
        path = Path(folder) / IMAGE_PROCESSOR_FILE
        if not path.is_file():
            raise UserError(f"{path} is missing: a model folder needs the image processor's {IMAGE_PROCESSOR_FILE}.")
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{path} is not valid JSON ({error}): restore it from the model's source.") from error
        if not isinstance(fields, dict):
            raise UserError(f"{path} must hold a JSON object, not {type(fields).__name__}.")
        fields = {k: v for k, v in fields.items() if k not in METADATA_KEYS}
        fields.update(overrides)
        known = {"num_crops", "num_img_tokens", "image_mean", "image_std", "do_convert_rgb", "crop_size"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise UserError(f"{path}: unknown key(s) {unknown}; the known keys are {sorted(known | METADATA_KEYS)}.")
        try:
            return cls(**fields)
        except UserError as error:
            raise UserError(f"{path}: {error}") from None

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
# Tokenizer


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int) -> LlamaTokenizer:
    """Train a small Llama-style tokenizer (BPE over Metaspace words, byte fallback) with Phi's special tokens.

    Ids follow the official layout: 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3..258 the byte tokens, then the
    learned pieces, then `<|endoftext|>` (pad) and the chat tokens. `len(tokenizer) <= vocab_size`.
    """
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    base_tokens = [UNK, BOS, EOS] + byte_tokens
    num_added = 1 + len(CHAT_SPECIAL_TOKENS)
    smallest = len(base_tokens) + num_added + 1
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        raise UserError(f"vocab_size = {vocab_size!r} is too small: use at least {smallest} (bytes + special tokens).")
    model_vocab_size = vocab_size - num_added

    trainer_tokenizer = Tokenizer(models.BPE(unk_token=UNK, byte_fallback=True))
    # Split at word starts while learning so merges stay inside words, as sentencepiece's do.
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=model_vocab_size,
        special_tokens=base_tokens,  # reserves ids 0..258 in this order
        limit_alphabet=max(1, model_vocab_size - len(base_tokens)),  # rarer characters use byte fallback
        show_progress=False,
    )
    trainer_tokenizer.train_from_iterator(corpus, trainer)
    learned = json.loads(trainer_tokenizer.to_str())["model"]

    tokenizer = LlamaTokenizer(
        vocab=learned["vocab"],
        merges=[tuple(pair) for pair in learned["merges"]],
        add_bos_token=True,
    )
    tokenizer.add_special_tokens({"pad_token": PAD, "additional_special_tokens": CHAT_SPECIAL_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


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


class Phi3VProcessor:
    """Tokenizer + image processor: image tags to image tokens, chat format, padded batches."""

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer, image_token_id: int | None = None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        if image_token_id is None:
            image_token_id = tokenizer.get_vocab().get(IMAGE_TOKEN, DEFAULT_IMAGE_TOKEN_ID)
        self.image_token_id = image_token_id
        if tokenizer.pad_token_id is None:
            raise UserError(f"the tokenizer has no pad token: set pad_token to {PAD} in tokenizer_config.json.")
        self.pad_token_id = tokenizer.pad_token_id
        self.chat_template = tokenizer.chat_template or CHAT_TEMPLATE

    @property
    def stop_token_ids(self) -> list[int]:
        """Where generation ends: `<|end|>` closes an assistant turn; `<|endoftext|>` and EOS too."""
        vocab = self.tokenizer.get_vocab()
        ids = [vocab.get(END), vocab.get(PAD), self.tokenizer.eos_token_id]
        return list(dict.fromkeys(i for i in ids if i is not None))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **image_processor_overrides) -> "Phi3VProcessor":
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"model folder {folder} does not exist: build or download the model first.")
        image_processor = Phi3VImageProcessor.from_pretrained(folder, **image_processor_overrides)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load the tokenizer from {folder} ({error}): the folder needs tokenizer files.") from error
        return cls(image_processor, tokenizer)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        self.image_processor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    # -- text ---------------------------------------------------------------------------------

    def generation_prompt(self, user: str) -> str:
        """`<|user|>\\n{user}<|end|>\\n<|assistant|>\\n`: the chat-formatted prompt of one user turn."""
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=True,
        )

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

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

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
    ) -> BatchFeature:
        """Prompts (+ their images) -> BatchFeature(input_ids, attention_mask[, pixel_values, image_sizes])."""
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
