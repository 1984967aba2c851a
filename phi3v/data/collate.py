"""Batching training examples: padded batches, packed rows, accumulation plans."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import DataCollatorWithFlattening

from phi3v.errors import UserError
from phi3v.processing_phi3v import IGNORE_INDEX


def _images_of(examples: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Every example's crops and image sizes, concatenated in example order (None without images)."""
    crops = [ex["pixel_values"] for ex in examples if ex.get("pixel_values") is not None and len(ex["pixel_values"])]
    sizes = [ex["image_sizes"] for ex in examples if ex.get("image_sizes") is not None and len(ex["image_sizes"])]
    if not crops:
        return None, None
    return torch.cat(crops), torch.cat(sizes).long()  # (total_crops, 3, S, S), (num_images, 2)


def collate_padded(
    examples: Sequence[Mapping[str, Any]], pad_token_id: int, padding_side: str = "right",
    mask_pad_id: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Pad examples to the longest: `input_ids`, `attention_mask`, `labels` (B, T) plus images.

    Padding gets `pad_token_id`, attention 0 and label -100. `mask_pad_id`: attention 0 wherever the
    id is `pad_token_id`, inside a sample too (the recipe's NLVR2 collator, `attention_mask: pad_id`).
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")

    # torch's pad_sequence, not the tokenizer's pad: callers hold only the pad id, and pad leaves labels ragged
    def pad(rows: list, value: int) -> torch.Tensor:
        rows = [torch.as_tensor(row, dtype=torch.long) for row in rows]
        return pad_sequence(rows, batch_first=True, padding_value=value, padding_side=padding_side)  # (B, T)

    input_ids = pad([ex["input_ids"] for ex in examples], pad_token_id)
    labels = pad([ex["labels"] for ex in examples], IGNORE_INDEX)
    if mask_pad_id:
        attention_mask = (input_ids != pad_token_id).long()
    else:
        attention_mask = pad([[1] * len(ex["input_ids"]) for ex in examples], 0)
    pixel_values, image_sizes = _images_of(examples)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": pixel_values,
        "image_sizes": image_sizes,
    }


def collate_packed(examples: Sequence[Mapping[str, Any]], flash_attention: bool = False) -> dict[str, Any]:
    """Concatenate examples into one row (1, sum T) with `position_ids` restarting at 0 per sample.

    No attention mask: the model separates samples by their position ids. The label at each
    sample start is -100, so no sample's first token is predicted from the previous sample.
    `flash_attention`: also the varlen kernel's sample boundaries (`cu_seq_lens_q/k`, int32 (n+1,))
    and longest sample (`max_length_q/k`, an int), transformers' FlashAttentionKwargs, computed here
    once: from position_ids alone transformers recomputes them, with device syncs, in every layer.
    The images, which transformers' collator does not carry, follow in example order.
    """
    flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_attention, return_tensors="pt")
    batch = flatten(examples)
    batch["pixel_values"], batch["image_sizes"] = _images_of(examples)
    return batch


def effective_batch_plan(batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Gradient accumulation steps so that per_device_batch_size × world_size × steps = batch_size."""
    for key, value in (("batch_size", batch_size), ("per_device_batch_size", per_device_batch_size), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{key}={value!r} — give a positive integer")
    per_step = per_device_batch_size * world_size
    if batch_size % per_step:
        raise UserError(
            f"batch_size={batch_size} is not divisible by per_device_batch_size={per_device_batch_size} "
            f"× {world_size} process(es) = {per_step} — set batch_size to a multiple of {per_step} "
            f"or change per_device_batch_size"
        )
    return batch_size // per_step
