"""loss_reduction: sample_mean (the recipe's: each sample's own token mean, samples averaged) and
token_mean, exact under padding, packing and a split into micro-batches (accumulation / processes)."""

import pytest
import torch

from phi3v.data.collate import collate_packed
from phi3v.training.loop import loss_items
from .phi3v_inputs import make_sample, pad_batch

# answers of very different lengths, so the two reductions differ clearly
ANSWER_LENGTHS = [1, 2, 9, 20]


@pytest.fixture(scope="module")
def samples(tiny_config):
    return [make_sample(tiny_config, [(1, 1)], prompt_len=3, answer_len=n, seed=i)
            for i, n in enumerate(ANSWER_LENGTHS)]


def own_means(model, samples):
    with torch.no_grad():
        return torch.stack([model(**pad_batch([s])).loss for s in samples])


def test_sample_mean_is_the_mean_of_each_samples_own_mean(tiny_model, samples):
    alone = own_means(tiny_model, samples)
    with torch.no_grad():
        sample_mean = tiny_model(**pad_batch(samples), loss_reduction="sample_mean").loss
        token_mean = tiny_model(**pad_batch(samples), loss_reduction="token_mean").loss
    torch.testing.assert_close(sample_mean, alone.mean(), rtol=0, atol=1e-5)
    tokens = torch.tensor(ANSWER_LENGTHS, dtype=alone.dtype)
    torch.testing.assert_close(token_mean, (alone * tokens).sum() / tokens.sum(), rtol=0, atol=1e-5)
    assert abs(sample_mean - token_mean) > 1e-3  # the two are different numbers here


@pytest.mark.parametrize("reduction", ["sample_mean", "token_mean"])
def test_micro_batch_contributions_add_up_to_the_effective_batch_loss(tiny_model, samples, reduction):
    """Accumulation (or processes) over micro-batches of 1 and 3 samples: each micro-batch divides by
    the whole window's count, so the contributions sum to the one-batch loss."""
    micro = [pad_batch(samples[:1]), pad_batch(samples[1:])]
    window = sum(loss_items(b, reduction) for b in micro)
    with torch.no_grad():
        whole = tiny_model(**pad_batch(samples), loss_reduction=reduction).loss
        parts = [tiny_model(**b, num_items_in_batch=window, loss_reduction=reduction).loss for b in micro]
    torch.testing.assert_close(sum(parts), whole, rtol=0, atol=1e-5)


def test_packed_row_splits_into_its_samples(tiny_model, samples):
    """A packed row is several samples: sample_mean averages their own means, as if padded."""
    packed = collate_packed([{k: v for k, v in s.items()} for s in samples])
    assert int(loss_items(packed, "sample_mean")) == len(samples)
    assert int(loss_items(packed, "token_mean")) == sum(ANSWER_LENGTHS)
    with torch.no_grad():
        loss = tiny_model(**packed, loss_reduction="sample_mean").loss
    torch.testing.assert_close(loss, own_means(tiny_model, samples).mean(), rtol=0, atol=1e-4)
