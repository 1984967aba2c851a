"""Batching training examples: padded batches, packed rows, packing plans, accumulation plans."""

from __future__ import annotations

import random
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler

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
    longest = max(len(ex["input_ids"]) for ex in examples)
    batch_size = len(examples)
    input_ids = torch.full((batch_size, longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, longest), dtype=torch.long)
    labels = torch.full((batch_size, longest), IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(examples):
        length = len(ex["input_ids"])
        span = slice(0, length) if padding_side == "right" else slice(longest - length, longest)
        input_ids[row, span] = torch.as_tensor(ex["input_ids"])
        attention_mask[row, span] = 1
        labels[row, span] = torch.as_tensor(ex["labels"])
    if mask_pad_id:
        attention_mask = (input_ids != pad_token_id).long()
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
    """
    lengths = [len(ex["input_ids"]) for ex in examples]
    input_ids = torch.cat([torch.as_tensor(ex["input_ids"]) for ex in examples]).long()
    position_ids = torch.cat([torch.arange(length) for length in lengths])
    labels = torch.cat([torch.as_tensor(ex["labels"]) for ex in examples]).long().clone()
    labels[position_ids == 0] = IGNORE_INDEX
    pixel_values, image_sizes = _images_of(examples)
    batch = {
        "input_ids": input_ids[None],  # (1, sum T)
        "position_ids": position_ids[None],
        "labels": labels[None],
        "pixel_values": pixel_values,
        "image_sizes": image_sizes,
    }
    if flash_attention:
        boundaries = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)  # (n + 1,)
        batch.update(cu_seq_lens_q=boundaries, cu_seq_lens_k=boundaries.clone(),
                     max_length_q=max(lengths), max_length_k=max(lengths))
    return batch


def pack_indices(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group sample indices into packs of at most `max_tokens` tokens (first fit, in the given order).

    Every index appears in exactly one pack; a sample longer than the budget is an error.
    """
    too_long = [(i, n) for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        i, n = too_long[0]
        raise UserError(
            f"packing: sample {i} has {n} tokens, more than the packing budget of {max_tokens} "
            f"({len(too_long)} sample(s) too long) — raise the budget or lower num_crops"
        )
    packs: list[list[int]] = []
    room: list[int] = []  # tokens left in each pack
    for index, length in enumerate(lengths):
        target = next((p for p, left in enumerate(room) if left >= length), None)
        if target is None:
            packs.append([])
            room.append(max_tokens)
            target = len(packs) - 1
        packs[target].append(index)
        room[target] -= length
    return packs


class PackingSampler(Sampler[list[int]]):
    """Batch sampler yielding packs of indices under a token budget, reshuffled every epoch.

    With several processes each rank takes every `world_size`-th pack; all ranks get the same
    number of packs (the last few are dropped) so their steps stay in lockstep.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _packs_of_this_rank(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        packs = pack_indices([self.lengths[i] for i in order], self.max_tokens)
        packs = [[order[i] for i in pack] for pack in packs]
        per_rank = len(packs) // self.world_size
        return packs[self.rank::self.world_size][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._packs_of_this_rank())

    def __len__(self) -> int:
        return len(self._packs_of_this_rank())


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
