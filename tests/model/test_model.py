"""Phi3VForCausalLM on the tiny config: batching, loading/saving the release layout, kernels, generation, errors."""

import json
import os

import pytest
import torch
from safetensors import safe_open

from phi3v.errors import UserError
from phi3v.modeling_phi3v import Phi3VForCausalLM
from phi3v.testing import official_key_shapes, write_official_checkpoint
from .phi3v_inputs import make_images, make_sample, pad_batch

MIXED_GRIDS = [[], [(1, 2)], [(1, 1), (2, 1)], [(1, 1)] * 8]  # 0, 1, 2 and 8 images


def saved_keys(folder):
    files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    keys = {}
    for name in files:
        with safe_open(os.path.join(folder, name), "pt") as f:
            keys.update({k: f.get_tensor(k) for k in f.keys()})
    return keys


def test_batch_equals_one_at_a_time(tiny_model, tiny_config):
    samples = [make_sample(tiny_config, grids, prompt_len=3 + i, answer_len=2 + i, seed=i)
               for i, grids in enumerate(MIXED_GRIDS)]
    with torch.no_grad():
        batched = tiny_model(**pad_batch(samples))
        alone = [tiny_model(**pad_batch([s])).loss for s in samples]
    # fp32; padding only changes the attention mask, so per-sample losses agree to rounding
    torch.testing.assert_close(batched.loss_per_sample, torch.stack(alone), rtol=0, atol=1e-5)
    supervised = [int((s["labels"] != -100).sum()) for s in samples]
    weighted = sum(l * n for l, n in zip(alone, supervised)) / sum(supervised)
    torch.testing.assert_close(batched.loss, weighted, rtol=0, atol=1e-5)


def test_loss_matches_full_logits(tiny_model, tiny_config):
    sample = pad_batch([make_sample(tiny_config, [(2, 2)], seed=7)])
    with torch.no_grad():
        loss = tiny_model(**sample).loss
        logits = tiny_model(**{k: v for k, v in sample.items() if k != "labels"}).logits
    reference = torch.nn.functional.cross_entropy(logits[0, :-1], sample["labels"][0, 1:], ignore_index=-100)
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-6)


def test_official_checkpoint_loads_and_round_trips(tmp_path, official_folder, tiny_model, tiny_config):
    assert (official_folder / "model.safetensors.index.json").exists()
    official = saved_keys(official_folder)
    sample = pad_batch([make_sample(tiny_config, [(1, 2), (2, 1)], seed=1)])
    del sample["labels"]
    with torch.no_grad():
        logits = tiny_model(**sample).logits

    tiny_model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    written = saved_keys(tmp_path)
    assert set(written) == set(official)
    assert all(torch.equal(written[k], official[k]) for k in official)  # separators included
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["rope_scaling"]["type"] == "su"

    again = Phi3VForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(again(**sample).logits, logits)


def test_sdpa_and_eager_agree(official_folder, tiny_model, tiny_config):
    eager = Phi3VForCausalLM.from_pretrained(official_folder, dtype=torch.float32, attn_implementation="eager")
    assert eager.model.vision_embed_tokens.img_processor.config._attn_implementation == "eager"
    assert tiny_model.model.vision_embed_tokens.img_processor.config._attn_implementation == "sdpa"
    batch = pad_batch([make_sample(tiny_config, grids, seed=i) for i, grids in enumerate(MIXED_GRIDS)])
    del batch["labels"]
    with torch.no_grad():
        mask = batch["attention_mask"].bool()
        torch.testing.assert_close(eager(**batch).logits[mask], tiny_model(**batch).logits[mask],
                                   rtol=1e-5, atol=1e-5)


def test_generation_with_cache_equals_without(tiny_model, tiny_config):
    prompts = [make_sample(tiny_config, [(1, 1)], answer_len=0, seed=2),
               make_sample(tiny_config, [(2, 1), (1, 1)], prompt_len=8, answer_len=0, seed=3)]
    batch = pad_batch(prompts, side="left")
    del batch["labels"]
    common = dict(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        cached = tiny_model.generate(**common, use_cache=True)
        uncached = tiny_model.generate(**common, use_cache=False)
        alone = tiny_model.generate(**{**common, **{k: v for k, v in pad_batch(prompts[:1]).items()
                                                    if k != "labels"}}, use_cache=True)
    assert cached.shape == (2, batch["input_ids"].shape[1] + 6)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[0, -6:], alone[0, -6:])  # left padding does not change the answer


def test_packed_samples_match_separate(tiny_model, tiny_config):
    samples = [make_sample(tiny_config, [(1, 1)], seed=4), make_sample(tiny_config, [(1, 2)], seed=5)]
    packed = {
        "input_ids": torch.cat([s["input_ids"] for s in samples])[None],
        "labels": torch.cat([s["labels"] for s in samples])[None],
        "position_ids": torch.cat([torch.arange(len(s["input_ids"])) for s in samples])[None],
        "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
        "image_sizes": torch.cat([s["image_sizes"] for s in samples]),
    }
    with torch.no_grad():
        loss = tiny_model(**packed).loss
        separate = [tiny_model(**pad_batch([s])) for s in samples]
    counts = [int((s["labels"] != -100).sum()) for s in samples]
    expected = sum(o.loss * n for o, n in zip(separate, counts)) / sum(counts)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)


def test_gradient_checkpointing_reaches_lm_and_clip(official_folder, tiny_config):
    model = Phi3VForCausalLM.from_pretrained(official_folder, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    layers = list(model.model.layers) + list(model.model.vision_embed_tokens.img_processor.encoder.layers)
    assert all(layer.gradient_checkpointing for layer in layers)
    batch = pad_batch([make_sample(tiny_config, [(1, 1)], seed=6)])
    model(**batch).loss.backward()
    embedding = model.model.vision_embed_tokens
    assert embedding.img_processor.encoder.layers[0].mlp.fc1.weight.grad is not None
    assert embedding.sub_GN.grad.abs().sum() > 0 and model.model.layers[0].mlp.down_proj.weight.grad is not None


def test_drop_unused_vision_layers_keeps_outputs_and_checkpoint(tmp_path, official_folder, tiny_config):
    model = Phi3VForCausalLM.from_pretrained(official_folder, dtype=torch.float32)
    batch = pad_batch([make_sample(tiny_config, [(2, 2)], seed=8)])
    del batch["labels"]
    with torch.no_grad():
        before = model(**batch).logits
        removed = model.drop_unused_vision_layers()
        after = model(**batch).logits
    assert torch.equal(before, after)
    clip_layers = tiny_config.vision_config.num_hidden_layers
    assert len(model.model.vision_embed_tokens.img_processor.encoder.layers) == clip_layers - 1
    assert any("post_layernorm" in name for name in removed)
    assert not any("post_layernorm" in name for name, _ in model.named_parameters())
    model.save_pretrained(tmp_path)
    official = saved_keys(official_folder)
    written = saved_keys(tmp_path)
    assert set(written) == set(official) and all(torch.equal(written[k], official[k]) for k in official)


def test_random_init_builds_on_the_target_device(tiny_config):
    model = Phi3VForCausalLM.random_init(tiny_config, device="cpu", dtype=torch.bfloat16)
    tensors = list(model.parameters()) + list(model.buffers())
    assert not any(t.is_meta for t in tensors)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # rope stays exact in low precision
    assert torch.count_nonzero(model.model.vision_embed_tokens.glb_GN) == 0
    assert model.lm_head.weight.float().std() > 0
    with torch.no_grad():
        out = model(**{k: v for k, v in pad_batch([make_sample(tiny_config, [(1, 1)])]).items() if k != "labels"})
    assert torch.isfinite(out.logits.float()).all()


# ---- bad input --------------------------------------------------------------------------------------------

def test_missing_key_is_reported(tmp_path, tiny_config):
    write_official_checkpoint(tmp_path, tiny_config)
    from safetensors.torch import load_file, save_file
    weights = load_file(tmp_path / "model.safetensors")
    missing = "model.vision_embed_tokens.sub_GN"
    del weights[missing]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="missing keys: .*sub_GN"):
        Phi3VForCausalLM.from_pretrained(tmp_path)


def test_unexpected_key_is_reported(tmp_path, tiny_config):
    write_official_checkpoint(tmp_path, tiny_config)
    from safetensors.torch import load_file, save_file
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.vision_embed_tokens.wte.weight"] = torch.zeros(2, 2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="unexpected keys: .*wte"):
        Phi3VForCausalLM.from_pretrained(tmp_path)


def test_other_model_type_is_refused(tmp_path, tiny_config):
    write_official_checkpoint(tmp_path, tiny_config)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "llava"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="model_type is 'llava'"):
        Phi3VForCausalLM.from_pretrained(tmp_path)


def test_image_positions_must_match_features(tiny_model, tiny_config):
    sample = make_sample(tiny_config, [(1, 1)], answer_len=0)
    ids = sample["input_ids"]
    short = ids[ids != tiny_config.image_token_id][:3].tolist() + [tiny_config.image_token_id] * 5
    with pytest.raises(UserError, match="5 image positions .* give 13 features"):
        tiny_model(input_ids=torch.tensor([short]), pixel_values=sample["pixel_values"],
                   image_sizes=sample["image_sizes"])
    with pytest.raises(UserError, match="no pixel_values"):
        tiny_model(input_ids=ids[None])


def test_crop_count_must_match_image_sizes(tiny_model, tiny_config):
    pixel_values, image_sizes = make_images(tiny_config, [(2, 2)])
    with pytest.raises(UserError, match="pixel_values has 4 crops"):
        tiny_model.model.vision_embed_tokens(pixel_values[:4], image_sizes)


@pytest.mark.parametrize("kernel, message", [("flash_attention_2", "flash"), ("xformers", "not supported")])
def test_unavailable_attention_is_refused(official_folder, kernel, message):
    if kernel == "flash_attention_2" and torch.cuda.is_available():
        pytest.skip("flash attention may be usable here")
    with pytest.raises(UserError, match=message):
        Phi3VForCausalLM.from_pretrained(official_folder, attn_implementation=kernel)


def test_official_key_shapes_cover_the_tiny_model(tiny_model):
    # the tiny checkpoint writer and the module tree agree on every tensor (names in checkpoint form)
    from transformers.core_model_loading import revert_weight_conversion
    saved = revert_weight_conversion(tiny_model, tiny_model.state_dict())
    assert {k: tuple(v.shape) for k, v in saved.items()} == official_key_shapes(tiny_model.config)
