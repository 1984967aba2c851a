from __future__ import annotations

import pytest
import torch

from phi3v.data.collate import collate_packed, collate_padded, effective_batch_plan
from phi3v.errors import UserError

S = 4  # crop size of these examples


def example(length: int, start: int, num_images: int, crops_per_image: int = 2, prompt: int = 2) -> dict:
    """An encoded example: ids start..start+length, the first `prompt` tokens unsupervised."""
    input_ids = torch.arange(start, start + length)
    labels = input_ids.clone()
    labels[:prompt] = -100
    return {
        "input_ids": input_ids,
        "labels": labels,
        "pixel_values": torch.full((num_images * crops_per_image, 3, S, S), float(start)) if num_images else None,
        "image_sizes": torch.tensor([[S, S * (crops_per_image - 1)]] * num_images) if num_images else None,
        "num_images": num_images,
    }


def test_collate_padded_right():
    batch = collate_padded([example(3, 10, 1), example(5, 20, 2)], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 0, 0], [20, 21, 22, 23, 24]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 12, -100, -100], [-100, -100, 22, 23, 24]]
    assert batch["pixel_values"].shape == (6, 3, S, S)  # 1 image × 2 crops + 2 images × 2 crops
    assert batch["pixel_values"][:2].eq(10).all() and batch["pixel_values"][2:].eq(20).all()  # example order
    assert batch["image_sizes"].tolist() == [[S, S]] * 3 and batch["image_sizes"].dtype == torch.long
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values", "image_sizes"}


def test_collate_padded_left_and_without_images():
    batch = collate_padded([example(2, 10, 0), example(4, 20, 0)], pad_token_id=7, padding_side="left")
    assert batch["input_ids"].tolist() == [[7, 7, 10, 11], [20, 21, 22, 23]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100] * 4, [-100, -100, 22, 23]]
    assert batch["pixel_values"] is None and batch["image_sizes"] is None
    with pytest.raises(ValueError, match="padding_side"):
        collate_padded([example(2, 10, 0)], pad_token_id=0, padding_side="middle")


def test_collate_packed_positions_and_boundaries():
    examples = [example(3, 10, 1, prompt=0), example(4, 20, 0, prompt=0), example(2, 30, 1, prompt=1)]
    batch = collate_packed(examples)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 22, 23, 30, 31]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1]]
    # a sample's first token is never a target, so nothing is predicted across a boundary
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, 21, 22, 23, -100, 31]]
    assert "attention_mask" not in batch
    assert batch["pixel_values"].shape == (4, 3, S, S) and batch["image_sizes"].shape == (2, 2)
    assert examples[0]["labels"][0] == 10  # inputs untouched


def test_effective_batch_plan():
    assert effective_batch_plan(64, 1, 1) == 64
    assert effective_batch_plan(64, 2, 4) == 8
    assert effective_batch_plan(8, 8, 1) == 1
    with pytest.raises(UserError, match=r"batch_size=64 is not divisible by per_device_batch_size=3 × 2 process\(es\) = 6"):
        effective_batch_plan(64, 3, 2)
    with pytest.raises(UserError, match="per_device_batch_size=0"):
        effective_batch_plan(64, 0, 1)


def test_pad_id_mask_hides_every_pad_id_as_the_recipes_nlvr2_collator():
    """attention_mask: pad_id masks the pad id inside a sample too (the `<|endoftext|>` ending a turn);
    the default masks only the padding."""
    pad = 9
    examples = [{"input_ids": [1, 5, pad, 6, 7], "labels": [-100, 5, pad, 6, 7]},
                {"input_ids": [1, 8, pad], "labels": [-100, 8, pad]}]
    by_length = collate_padded(examples, pad_token_id=pad)["attention_mask"]
    by_id = collate_padded(examples, pad_token_id=pad, mask_pad_id=True)["attention_mask"]
    assert by_length.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert by_id.tolist() == [[1, 1, 0, 1, 1], [1, 1, 0, 0, 0]]
