"""Phi-3.5-vision's processor: prompts and their images to model inputs, the chat format, training examples.

The processor replaces each `<|image_k|>` tag with as many image tokens as the model will produce features for
that image (`Phi3VImageProcessor`, in `image_processing_phi3v.py`, says how many) and pads the batch with the
tokenizer's own `pad`.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from phi3v.configuration_phi3v import DEFAULT_IMAGE_TOKEN_ID
from phi3v.errors import UserError
from phi3v.image_files import image_name
from phi3v.image_processing_phi3v import (IMAGE_PROCESSOR_FILE, IMAGE_PROCESSOR_SETTINGS, Phi3VImageProcessor,
                                          check_num_crops)
from phi3v.model_files import check_source

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
IMAGE_TOKEN = "<|image|>"
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

        padded = self.tokenizer.pad({"input_ids": sequences}, padding_side=padding_side, return_attention_mask=True,
                                    return_tensors="pt")  # to the longest, with the tokenizer's pad id
        data = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
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
        if not text:
            raise UserError("text is an empty list: give at least one prompt.")
        if images is None:
            return list(text), [[] for _ in text]
        if len(images) != len(text) or not all(isinstance(x, (list, tuple)) for x in images):
            raise UserError(
                f"{len(text)} prompts need images as a list of {len(text)} lists (one per prompt, [] for none)."
            )
        return list(text), [list(x) for x in images]

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
