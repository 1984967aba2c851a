"""The full-size module tree matches the release's checkpoint; the HD image layout is the published one."""

from pathlib import Path

import pytest
import torch
from transformers.core_model_loading import revert_weight_conversion

from phi3v.configuration_phi3v import Phi3VConfig
from phi3v.modeling_phi3v import Phi3VForCausalLM

from .phi3v_inputs import make_images

KEYS_FIXTURE = Path(__file__).parents[1] / "fixtures" / "official_keys.tsv"


def read_official_keys():
    rows = [line.split("\t") for line in KEYS_FIXTURE.read_text().splitlines() if not line.startswith("#")]
    return {name: tuple(int(d) for d in shape.split(",")) for name, shape in rows}


@pytest.fixture(scope="module")
def full_size_on_meta():
    with torch.device("meta"):
        return Phi3VForCausalLM(Phi3VConfig())


def test_full_size_parameter_count(full_size_on_meta):
    assert sum(p.numel() for p in full_size_on_meta.parameters()) == 4_146_621_440


def test_full_size_saves_the_official_keys(full_size_on_meta):
    # the same renaming save_pretrained applies before writing
    saved = revert_weight_conversion(full_size_on_meta, full_size_on_meta.state_dict())
    assert {name: tuple(t.shape) for name, t in saved.items()} == read_official_keys()


def test_lm_embedding_is_not_shared_with_the_image_embedder(full_size_on_meta):
    embed = full_size_on_meta.model.embed_tokens.weight
    vision_params = list(full_size_on_meta.model.vision_embed_tokens.parameters())
    assert all(p is not embed for p in vision_params)
    assert full_size_on_meta.lm_head.weight is not embed


def reference_formula(h_c, w_c, g):
    return (h_c * w_c + 1) * g * g + 1 + (h_c + 1) * g


@pytest.mark.parametrize("grids", [[(1, 1)], [(1, 2)], [(2, 2)], [(3, 1)], [(1, 4), (2, 3)], [(4, 4)]])
def test_image_feature_count(tiny_model, grids):
    config = tiny_model.config
    pixel_values, image_sizes = make_images(config, grids)
    with torch.no_grad():
        features = tiny_model.model.vision_embed_tokens(pixel_values, image_sizes)
    g = config.vision_config.image_size // config.vision_config.patch_size // 2
    assert features.shape == (sum(reference_formula(h, w, g) for h, w in grids), config.hidden_size)


def reference_hd_tokens(embedding, pixel_values, h_c, w_c):
    """The layout of REFERENCE §3, token by token: sub-crop grid rows each closed by sub_GN, glb_GN, global rows."""
    clip = embedding.img_processor
    states = clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]  # (crops, P*P, C)
    side = int(states.shape[1] ** 0.5)
    grid = states.reshape(-1, side, side, states.shape[-1])

    def merged(crop, row, col):  # 2x2 neighbours, row-major, concatenated
        return torch.cat([grid[crop, 2 * row + dr, 2 * col + dc] for dr in (0, 1) for dc in (0, 1)])

    g = side // 2
    sub, glb = embedding.sub_GN.reshape(-1), embedding.glb_GN.reshape(-1)
    tokens = []
    for row in range(h_c * g):
        for col in range(w_c * g):
            crop = 1 + (row // g) * w_c + col // g
            tokens.append(merged(crop, row % g, col % g))
        tokens.append(sub)
    tokens.append(glb)
    for row in range(g):
        tokens.extend(merged(0, row, col) for col in range(g))
        tokens.append(sub)
    return embedding.img_projection(torch.stack(tokens))


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (3, 2)])
def test_hd_layout_matches_reference(tiny_model, grid):
    embedding = tiny_model.model.vision_embed_tokens
    pixel_values, image_sizes = make_images(tiny_model.config, [grid], seed=3)
    with torch.no_grad():
        ours = embedding(pixel_values, image_sizes)
        reference = reference_hd_tokens(embedding, pixel_values, *grid)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
