"""Inputs for the model tests: random crops, samples with image positions, padded batches."""

import torch

BOS, PAD = 1, 0


def make_images(config, grids, seed=0):
    """pixel_values (total_crops, 3, S, S) and image_sizes (num_images, 2) for images of (h_c, w_c) crops."""
    size = config.crop_size
    generator = torch.Generator().manual_seed(seed)
    crops = sum(h * w + 1 for h, w in grids)
    pixel_values = torch.randn(crops, 3, size, size, generator=generator)
    image_sizes = torch.tensor([[h * size, w * size] for h, w in grids], dtype=torch.long).reshape(-1, 2)
    return pixel_values, image_sizes


def make_sample(config, grids, prompt_len=5, answer_len=4, seed=0):
    """input_ids with a BOS-led text piece before the images and after each, labels on the answer only."""
    generator = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(3, config.image_token_id, (n,), generator=generator)  # noqa: E731
    pieces = [torch.tensor([BOS]), text(prompt_len)]
    for h, w in grids:
        pieces += [torch.full((config.image_token_count(h, w),), config.image_token_id), torch.tensor([BOS]), text(2)]
    prompt = torch.cat(pieces)
    answer = text(answer_len)
    input_ids = torch.cat([prompt, answer])
    labels = torch.cat([torch.full_like(prompt, -100), answer])
    pixel_values, image_sizes = make_images(config, grids, seed) if grids else (None, None)
    return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values, "image_sizes": image_sizes}


def pad_batch(samples, side="right"):
    """Pad 1-D samples into a batch; image tensors concatenated in sample order."""
    length = max(len(s["input_ids"]) for s in samples)
    ids, labels, mask = [], [], []
    for s in samples:
        pad = length - len(s["input_ids"])
        fill = lambda t, v: (torch.cat([t, torch.full((pad,), v)]) if side == "right"  # noqa: E731
                             else torch.cat([torch.full((pad,), v), t]))
        ids.append(fill(s["input_ids"], PAD))
        labels.append(fill(s["labels"], -100))
        mask.append(fill(torch.ones_like(s["input_ids"]), 0))
    with_images = [s for s in samples if s["pixel_values"] is not None]
    return {
        "input_ids": torch.stack(ids), "labels": torch.stack(labels), "attention_mask": torch.stack(mask),
        "pixel_values": torch.cat([s["pixel_values"] for s in with_images]) if with_images else None,
        "image_sizes": torch.cat([s["image_sizes"] for s in with_images]) if with_images else None,
    }
