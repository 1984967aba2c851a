"""The training's learning-rate schedule gives transformers' linear warm-up and decay, float for float."""

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from phi3v.training.optimizer import linear_schedule_with_warmup


@pytest.mark.parametrize("warmup, total", [(10, 37), (0, 5), (50, 30), (3, 3)])
def test_linear_schedule_matches_transformers(warmup, total):
    def learning_rates(make_schedule):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0e-3)
        schedule = make_schedule(optimizer, warmup, total)
        rates = []
        for _ in range(total + 2):
            rates.append(schedule.get_last_lr()[0])
            optimizer.step()
            schedule.step()
        return rates

    assert learning_rates(linear_schedule_with_warmup) == learning_rates(get_linear_schedule_with_warmup)
