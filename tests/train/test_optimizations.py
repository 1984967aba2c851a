"""Settings beyond the recipe compute the same step: loss and gradients equal the plain step's."""

from __future__ import annotations

import pytest
import torch

from phi3v.data.collate import collate_packed, collate_padded
from phi3v.data.dataset import ConversationDataset
from phi3v.errors import UserError
from phi3v.processing_phi3v import Phi3VProcessor
from phi3v.training import optimizations
from phi3v.training.optimizations import apply_optimizations, check_optimizations, clip_layers, decoder_layers
from phi3v.training.model_setup import build_model

from .conftest import DATASET, base_run

# fp32 steps (no autocast): what differs is only the order of float sums
RTOL, ATOL = 1e-4, 1e-6
# compiled kernels fuse and reorder reductions: a looser bound, still far below any real change
COMPILED_RTOL, COMPILED_ATOL = 1e-3, 1e-5


@pytest.fixture(scope="module")
def examples(tiny_base, tiny_data):
    processor = Phi3VProcessor.from_pretrained(tiny_base)
    dataset = ConversationDataset(tiny_data / f"{DATASET}_train.jsonl", tiny_data / "images", processor, 1)
    return [dataset[i] for i in range(3)], processor.pad_token_id


def step(run, base, batch):
    """Loss and gradients of one fp32 forward + backward of `batch` under `run`'s settings."""
    torch.manual_seed(0)  # same LoRA initialisation in every build
    model = apply_optimizations(build_model(run, str(base)), run)
    model.train()
    loss = model(**{k: v for k, v in batch.items() if v is not None}).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, model


def assert_same_step(plain, other, rtol=RTOL, atol=ATOL):
    (loss_a, grads_a, _), (loss_b, grads_b, _) = plain, other
    torch.testing.assert_close(loss_b, loss_a, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=rtol, atol=atol, msg=name)


def padded(examples):
    items, pad = examples
    return collate_padded(items, pad_token_id=pad)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_selective_checkpointing_computes_the_plain_step(strategy, tiny_base, examples):
    lora = dict(lora_rank=4, lora_alpha=8) if strategy == "lora" else {}
    batch = padded(examples)
    plain = step(base_run(strategy=strategy, gradient_checkpointing=False, **lora), tiny_base, batch)
    selective = step(base_run(strategy=strategy, gradient_checkpointing=True, checkpointed_layers=1, **lora),
                     tiny_base, batch)
    assert [layer.gradient_checkpointing for layer in decoder_layers(selective[2])] == [True, False]
    assert_same_step(plain, selective)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_compiled_layers_compute_the_plain_step(strategy, tiny_base, examples, monkeypatch):
    # dynamo and AOT autograd trace as on a GPU; inductor's C++ code generation would take minutes here
    monkeypatch.setattr(optimizations, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    lora = dict(lora_rank=4, lora_alpha=8) if strategy == "lora" else {}
    batch = padded(examples)
    plain = step(base_run(strategy=strategy, gradient_checkpointing=True, **lora), tiny_base, batch)
    compiled = step(base_run(strategy=strategy, gradient_checkpointing=True, compile_layers=True, **lora),
                    tiny_base, batch)
    model = compiled[2]
    assert all(layer._compiled_call_impl is not None for layer in [*decoder_layers(model), *clip_layers(model)])
    assert_same_step(plain, compiled, COMPILED_RTOL, COMPILED_ATOL)


def test_frozen_vision_without_autograd_computes_the_plain_step(tiny_base, examples):
    batch = padded(examples)
    plain = step(base_run(strategy="frozen_vision"), tiny_base, batch)
    no_grad = step(base_run(strategy="frozen_vision", frozen_vision_no_grad=True), tiny_base, batch)
    assert_same_step(plain, no_grad)
    vision = no_grad[2].model.vision_embed_tokens
    with torch.enable_grad():
        features = vision(batch["pixel_values"], batch["image_sizes"])
    assert features.grad_fn is None  # autograd recorded nothing in CLIP or the projector


def test_frozen_vision_without_autograd_leaves_a_trained_vision_tower_alone(tiny_base, examples):
    batch = padded(examples)
    loss, grads, model = step(base_run(strategy="full", frozen_vision_no_grad=True), tiny_base, batch)
    assert any(name.startswith("model.vision_embed_tokens.") for name in grads)


def test_packed_batch_computes_the_padded_step(tiny_base, examples):
    """Padding-free batches (one row, position ids restarting) give the padded batch's loss and gradients."""
    items, _ = examples
    run = base_run(gradient_checkpointing=False)
    assert_same_step(step(run, tiny_base, padded(examples)), step(run, tiny_base, collate_packed(items)))


def test_fused_kernels_are_refused_with_the_reason_on_a_cpu():
    with pytest.raises(UserError, match="fused_kernels: true but .*(liger-kernel is not installed|Triton GPU)"):
        check_optimizations(base_run(fused_kernels=True), torch.device("cpu"))


def test_option_fields_are_checked():
    with pytest.raises(UserError, match="checkpointed_layers needs gradient_checkpointing"):
        base_run(checkpointed_layers=1, gradient_checkpointing=False)
    with pytest.raises(UserError, match="memory_budget_gib chooses checkpointed_layers"):
        base_run(memory_budget_gib=10, checkpointed_layers=1, gradient_checkpointing=True)
    with pytest.raises(UserError, match="memory_budget_gib=-1"):
        base_run(memory_budget_gib=-1, gradient_checkpointing=True)


def test_dataloader_workers_train_the_same_steps(tiny_base, tiny_data, tmp_path):
    """Worker processes decode the same batches in the same order: the losses are the single process's."""
    import json

    from phi3v.training.train import train

    losses = {}
    for workers in (0, 2):
        run = base_run(max_steps=2, dataloader_workers=workers)
        out = tmp_path / f"workers{workers}"
        train(run, base_model=tiny_base, data_dir=tiny_data, dataset_name=DATASET, out_dir=out,
              checkpoint_dir=tmp_path / f"ckpt{workers}")
        losses[workers] = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses[0]) == 2 and losses[0] == losses[2]
