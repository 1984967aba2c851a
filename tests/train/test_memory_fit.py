"""Memory-fitted micro-batches: the search, and a fitted run training the plain run's steps."""

from __future__ import annotations

import json

import pytest

from phi3v.errors import UserError
from phi3v.training.memory_fit import candidate_batches, choose_micro_batch
from phi3v.training.loop import fit
from phi3v.training.train import train

from .conftest import DATASET, base_run

LOSS_TOLERANCE = 1e-3  # relative; bf16 autocast rounds (B, T) batches of other B slightly differently


def fake_measure(weights=10.0, per_sample_layer=1.0, per_sample=0.5, layers=8):
    """GiB of a model whose un-checkpointed layers each hold `per_sample_layer` GiB a sample."""
    calls = []

    def measure(batch, checkpointed):
        calls.append((batch, checkpointed))
        return weights + batch * (per_sample + per_sample_layer * (layers - checkpointed))
    return measure, calls


def test_candidate_batches_divide_the_share_of_each_process():
    assert candidate_batches(64, 8) == [8, 4, 2, 1]
    assert candidate_batches(12, 1, largest=4) == [4, 3, 2, 1]


def test_the_largest_batch_then_the_fewest_checkpointed_layers_that_fit():
    measure, calls = fake_measure()
    # batch 32 does not fit even fully checkpointed (10 + 32 * 0.5 = 26 > 20);
    # batch 16: 10 + 16 * (0.5 + 8 - k) <= 20 needs k >= 7.875, so batch 16 with all 8 layers;
    # at a budget of 40, k >= 6.625: 7 layers
    fit = choose_micro_batch([32, 16, 8], 8, measure, budget_gib=20)
    assert (fit.per_device_batch_size, fit.checkpointed_layers) == (16, 8)
    measure, calls = fake_measure()
    fit = choose_micro_batch([16, 8, 4, 2, 1], 8, measure, budget_gib=40)
    assert (fit.per_device_batch_size, fit.checkpointed_layers) == (16, 7)
    assert calls[0] == (16, 8) and len(calls) <= 1 + 4  # one probe, then a bisection over 0..8
    assert all(gib is not None for _, _, gib in fit.probes)


def test_no_checkpointing_when_everything_fits():
    measure, _ = fake_measure()
    fit = choose_micro_batch([4, 2, 1], 8, measure, budget_gib=1000)
    assert (fit.per_device_batch_size, fit.checkpointed_layers) == (4, 0)


def test_nothing_fits_is_one_clear_error():
    measure, _ = fake_measure()
    with pytest.raises(UserError, match="memory_budget_gib=5: not even per-device batch 1"):
        choose_micro_batch([2, 1], 8, measure, budget_gib=5)


def test_a_fitted_run_trains_the_plain_runs_steps(tiny_base, tiny_data, tmp_path):
    """A budget everything fits in: batch 4 a process, no layer recomputed; the effective batch stays 8."""
    plain = base_run(batch_size=8, per_device_batch_size=2, max_steps=2, gradient_checkpointing=True)
    fitted = base_run(batch_size=8, per_device_batch_size=2, max_steps=2, gradient_checkpointing=True,
                      memory_budget_gib=64)
    plain_fit = fit(plain, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET,
                    checkpoint_dir=tmp_path / "plain")
    fitted_fit = fit(fitted, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET,
                     checkpoint_dir=tmp_path / "fitted")
    assert fitted_fit.metrics["memory_fit"]["per_device_batch_size"] == 8
    assert fitted_fit.metrics["memory_fit"]["checkpointed_layers"] == 0
    assert fitted_fit.metrics["accumulation_steps"] == 1 and plain_fit.metrics["accumulation_steps"] == 4
    assert fitted_fit.run.per_device_batch_size * fitted_fit.metrics["accumulation_steps"] == 8
    for a, b in zip(plain_fit.log, fitted_fit.log):
        assert abs(a["loss"] - b["loss"]) <= LOSS_TOLERANCE * a["loss"], (plain_fit.log, fitted_fit.log)


def test_a_tight_budget_checkpoints_more_layers(tiny_base, tiny_data, tmp_path):
    """On a CPU the probe counts weights, gradients and saved activations: a budget between decides."""
    run = base_run(batch_size=4, per_device_batch_size=1, max_steps=1, gradient_checkpointing=True,
                   memory_budget_gib=64)
    probes = fit(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET,
                 checkpoint_dir=tmp_path / "wide").metrics["memory_fit"]["probes"]
    by_shape = {(b, k): gib for b, k, gib in probes}
    assert by_shape[(4, 2)] < by_shape[(4, 0)]  # checkpointing saves activation memory
    between = (by_shape[(4, 2)] + by_shape[(4, 0)]) / 2
    tight = fit(base_run(batch_size=4, per_device_batch_size=1, max_steps=1, gradient_checkpointing=True,
                         memory_budget_gib=between), base_model=tiny_base, data_dir=tiny_data,
                dataset_name=DATASET, checkpoint_dir=tmp_path / "tight")
    assert tight.metrics["memory_fit"]["per_device_batch_size"] == 4
    assert tight.metrics["memory_fit"]["checkpointed_layers"] >= 1
    assert tight.metrics["settings"]["checkpointed_layers"] == tight.metrics["memory_fit"]["checkpointed_layers"]
