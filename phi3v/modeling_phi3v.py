"""Phi-3.5-vision: transformers' Phi-3 language model and CLIPVisionModel, joined by the HD image embedding.

Only the image embedding and the glue are written here. Checkpoints keep the release's key names: the one
difference to the modules below (CLIP's `vision_model.` level) is mapped by `CHECKPOINT_KEY_MAPPING`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, GenerationMixin
from transformers.cache_utils import Cache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.phi3.modeling_phi3 import Phi3Model, Phi3PreTrainedModel

from .configuration_phi3v import Phi3VConfig
from . import numerics
from .errors import UserError

ATTENTION_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
CLIP_PREFIX = "model.vision_embed_tokens.img_processor."

# Checkpoint name (release) -> module name (transformers 5.x CLIPVisionModel has no `vision_model` level).
CHECKPOINT_KEY_MAPPING = {
    r"^model\.vision_embed_tokens\.img_processor\.vision_model\.": "model.vision_embed_tokens.img_processor.",
}

register_checkpoint_conversion_mapping(
    "Phi3VForCausalLM",
    [WeightRenaming(source_patterns=k, target_patterns=v) for k, v in CHECKPOINT_KEY_MAPPING.items()],
    overwrite=True,
)

# Checkpoint shards above this size are split, like the release's two ~5 GB files.
DEFAULT_MAX_SHARD_SIZE = "5GB"


@dataclass
class Phi3VCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the mean loss of each sample over its own supervised tokens.

    loss_per_sample (`torch.FloatTensor` of shape `(batch_size,)`): NaN for a sample with no supervised token.
    """

    loss_per_sample: torch.FloatTensor | None = None


def check_attention_implementation(attn_implementation: str) -> None:
    """Refuse an unknown attention kernel, and flash attention where it cannot run."""
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise UserError(
            f"attn_implementation={attn_implementation!r} is not supported; use one of {ATTENTION_IMPLEMENTATIONS}."
        )
    if attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise UserError(
                "attn_implementation='flash_attention_2' needs the package flash-attn (pip install 'phi3v[flash]'); "
                "or choose 'sdpa'."
            )
        if not torch.cuda.is_available():
            raise UserError("attn_implementation='flash_attention_2' needs a CUDA GPU; on this machine use 'sdpa'.")


class Phi3VImageEmbedding(nn.Module):
    """CLIP features of every crop, merged 2x2, laid out in the HD "sub_glb" order, projected to the LM width."""

    def __init__(self, config: Phi3VConfig):
        super().__init__()
        clip_dim = config.vision_config.hidden_size
        merged_dim = 4 * clip_dim
        self.img_processor = CLIPVisionModel._from_config(config.vision_config)
        # separators: sub_GN ends every row of tokens, glb_GN sits between the sub-crop grid and the global crop
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, merged_dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, merged_dim))
        self.img_projection = nn.Sequential(
            nn.Linear(merged_dim, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )
        self.crop_size = config.crop_size
        self.tokens_per_side = config.tokens_per_crop_side
        # index into CLIP's hidden_states (0 = embeddings); valid before and after dropping the unused layers
        self.feature_index = config.vision_layers_used

    def crop_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(crops, 3, S, S) -> (crops, g, g, 4*C): patch features of the chosen layer, 2x2 neighbours concatenated."""
        clip_dtype = self.img_processor.embeddings.patch_embedding.weight.dtype
        hidden_states = self.img_processor(
            pixel_values.to(clip_dtype), output_hidden_states=True
        ).hidden_states[self.feature_index]
        patches = hidden_states[:, 1:]  # (crops, 2g*2g, C): CLS token dropped
        crops, _, channels = patches.shape
        g = self.tokens_per_side
        patches = patches.reshape(crops, g, 2, g, 2, channels)  # (crops, g, 2, g, 2, C)
        return patches.permute(0, 1, 3, 2, 4, 5).reshape(crops, g, g, 4 * channels)

    def hd_layout(self, global_crop: torch.Tensor, sub_crops: torch.Tensor, h_crops: int, w_crops: int) -> torch.Tensor:
        """One image's tokens: sub-crop grid with row ends, glb_GN, global crop with row ends -> (tokens, 4*C)."""
        g = self.tokens_per_side
        dim = global_crop.shape[-1]
        # (h*w, g, g, D) -> (h, w, g, g, D) -> (h, g, w, g, D) -> (h*g, w*g, D)
        grid = sub_crops.reshape(h_crops, w_crops, g, g, dim).permute(0, 2, 1, 3, 4).reshape(h_crops * g, w_crops * g, dim)
        grid = torch.cat([grid, self.sub_GN[0].expand(h_crops * g, 1, dim)], dim=1)  # (h*g, w*g + 1, D)
        glb = torch.cat([global_crop, self.sub_GN[0].expand(g, 1, dim)], dim=1)  # (g, g + 1, D)
        return torch.cat([grid.reshape(-1, dim), self.glb_GN[0], glb.reshape(-1, dim)], dim=0)

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """pixel_values (total_crops, 3, S, S), image_sizes (num_images, 2) -> (image tokens of all images, hidden)."""
        crop_grid = (image_sizes.long() // self.crop_size).tolist()  # [(h_c, w_c)] per image
        expected_crops = sum(h * w + 1 for h, w in crop_grid)
        if pixel_values.shape[0] != expected_crops:
            raise UserError(
                f"pixel_values has {pixel_values.shape[0]} crops but image_sizes {crop_grid} (in crops) need "
                f"{expected_crops} (h_c * w_c + 1 a image, global crop first); pass the processor's output unchanged."
            )
        features = self.crop_features(pixel_values)
        tokens, start = [], 0
        for h_crops, w_crops in crop_grid:
            count = h_crops * w_crops + 1
            image = features[start:start + count]
            tokens.append(self.hd_layout(image[0], image[1:], h_crops, w_crops))
            start += count
        return self.img_projection(torch.cat(tokens, dim=0))


class Phi3VPreTrainedModel(Phi3PreTrainedModel):
    config: Phi3VConfig
    config_class = Phi3VConfig
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Phi3VImageEmbedding):
            nn.init.zeros_(module.glb_GN)
            nn.init.zeros_(module.sub_GN)


class Phi3VModel(Phi3VPreTrainedModel, Phi3Model):
    """transformers' Phi3Model plus `vision_embed_tokens`; image features replace the image-token embeddings."""

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)  # Phi3Model: embed_tokens, layers, norm, rotary_emb
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.post_init()

    def embed(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None,
              image_sizes: torch.Tensor | None, prefill: bool) -> torch.Tensor:
        """Token embeddings with image features written, in order, at the `image_token_id` positions."""
        inputs_embeds = self.embed_tokens(input_ids)  # (B, L, hidden)
        image_positions = input_ids == self.config.image_token_id  # (B, L)
        if pixel_values is None:
            if prefill and image_positions.any():
                raise UserError(
                    f"input_ids hold {int(image_positions.sum())} image positions (id {self.config.image_token_id}) "
                    "but no pixel_values were given; pass the processor's pixel_values and image_sizes."
                )
            return inputs_embeds
        if image_sizes is None:
            raise UserError("pixel_values were given without image_sizes; pass both, as the processor returns them.")
        image_features = self.vision_embed_tokens(pixel_values, image_sizes)
        if int(image_positions.sum()) != image_features.shape[0]:
            raise UserError(
                f"input_ids hold {int(image_positions.sum())} image positions (id {self.config.image_token_id}) but "
                f"the {image_sizes.shape[0]} image(s) give {image_features.shape[0]} features; each image needs "
                "image_token_count(h_c, w_c) positions: build the inputs with the processor and the same num_crops."
            )
        return inputs_embeds.masked_scatter(image_positions.unsqueeze(-1), image_features.to(inputs_embeds.dtype))


def sample_segments(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) index of the sample each position belongs to: one per row, and in a packed row a new
    one wherever `position_ids` restart at 0."""
    starts = torch.zeros_like(labels, dtype=torch.bool)
    if position_ids is not None:
        starts |= position_ids.to(labels.device) == 0
    starts[:, 0] = True
    return starts.flatten().cumsum(0).view(labels.shape) - 1


class Phi3VForCausalLM(Phi3VPreTrainedModel, GenerationMixin):
    """Phi-3.5-vision with its LM head; loads and saves the release's checkpoint layout."""

    def __init__(self, config: Phi3VConfig):
        super().__init__(config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._dropped_vision_weights: dict[str, torch.Tensor] = {}
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        loss_reduction: str = "token_mean",
        **kwargs,
    ) -> Phi3VCausalLMOutput:
        cache = cache if cache is not None else past_key_values
        if use_cache is None and labels is not None:
            use_cache = False  # training: no KV cache, which also lets packed position_ids separate the samples
        numerics.pin_cpu_kernels(self.lm_head.weight.device)  # the same bits on every CPU vendor
        if inputs_embeds is None:
            prefill = cache is None or cache.get_seq_length() == 0
            inputs_embeds = self.model.embed(input_ids, pixel_values, image_sizes, prefill)
        outputs = self.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=use_cache, **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (B, L, hidden)

        if labels is None:
            logits = self.lm_head(hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states)
            return Phi3VCausalLMOutput(logits=logits, cache=outputs.cache)
        loss, loss_per_sample = self.supervised_loss(hidden_states, labels, num_items_in_batch, loss_reduction,
                                                     position_ids)
        return Phi3VCausalLMOutput(loss=loss, loss_per_sample=loss_per_sample, cache=outputs.cache)

    def supervised_loss(self, hidden_states: torch.Tensor, labels: torch.LongTensor,
                        num_items_in_batch: int | torch.Tensor | None = None, loss_reduction: str = "token_mean",
                        position_ids: torch.LongTensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token cross-entropy over labels != -100, the LM head run only at those positions.

        `token_mean`: the sum over supervised tokens / `num_items_in_batch` (default: their count).
        `sample_mean`: the sum over samples of each sample's own token mean / `num_items_in_batch`
        (default: the samples with a supervised token); packed rows split into samples where
        `position_ids` restart at 0. Also returns each row's own mean, shape (B,).
        """
        targets = labels[:, 1:].to(hidden_states.device)  # (B, L-1): position t predicts token t+1
        supervised = targets != -100
        logits = self.lm_head(hidden_states[:, :-1][supervised]).float()  # (N, vocab), N supervised tokens
        token_loss = F.cross_entropy(logits, targets[supervised], reduction="none")  # (N,)
        sample_of_token = supervised.nonzero()[:, 0]
        batch = labels.shape[0]
        per_sample_sum = token_loss.new_zeros(batch).index_add(0, sample_of_token, token_loss)
        loss_per_sample = per_sample_sum / supervised.sum(dim=1)
        if loss_reduction == "sample_mean":
            segment = sample_segments(labels, position_ids)[:, 1:][supervised]  # (N,) sample of each target
            sums = token_loss.new_zeros(int(segment.max()) + 1 if len(segment) else 0).index_add(0, segment, token_loss)
            counts = torch.bincount(segment, minlength=len(sums))
            means = sums[counts > 0] / counts[counts > 0]
            denominator = num_items_in_batch if num_items_in_batch is not None else max(len(means), 1)
            return means.sum() / denominator, loss_per_sample.detach()
        if loss_reduction != "token_mean":
            raise ValueError(f"loss_reduction={loss_reduction!r}: use token_mean or sample_mean")
        denominator = num_items_in_batch if num_items_in_batch is not None else supervised.sum().clamp(min=1)
        loss = token_loss.sum() / denominator
        return loss, loss_per_sample.detach()

    # ---- building, loading, saving ------------------------------------------------------------------------------

    @classmethod
    def random_init(cls, config: Phi3VConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    attn_implementation: str = "sdpa") -> "Phi3VForCausalLM":
        """Random weights built on `device` directly: modules on the meta device, then memory and init there."""
        check_attention_implementation(attn_implementation)
        config._attn_implementation = attn_implementation
        with torch.device("meta"), _default_dtype(dtype):
            model = cls(config)
        model.to_empty(device=device)
        model.initialize_weights()
        return model.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, attn_implementation: str = "sdpa",
                        **kwargs) -> "Phi3VForCausalLM":
        """Load a folder (or hub id) in the release's layout; every checkpoint key must be used and none missing."""
        from .model_files import check_weight_files, model_folder

        check_attention_implementation(attn_implementation)
        kwargs.pop("trust_remote_code", None)  # never needed: the model code is here
        kwargs.pop("output_loading_info", None)
        check_weight_files(model_folder(pretrained_model_name_or_path, **kwargs))
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, attn_implementation=attn_implementation,
            output_loading_info=True, **kwargs,
        )
        problems = [f"{kind.replace('_', ' ')}: {', '.join(sorted(map(str, info[kind])))}"
                    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)]
        if problems:
            raise UserError(
                f"{pretrained_model_name_or_path}: the checkpoint does not match Phi-3.5-vision's layout ("
                + "; ".join(problems) + "). Use a folder saved by this package or by microsoft/Phi-3.5-vision-instruct."
            )
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, *args, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                        state_dict: dict | None = None, **kwargs) -> None:
        """Write config.json and safetensors (shards + index above `max_shard_size`) with the release's key names;
        CLIP layers removed by `drop_unused_vision_layers` are written back from their kept copy."""
        if state_dict is None and self._dropped_vision_weights:
            state_dict = {**self.state_dict(), **self._dropped_vision_weights}
        super().save_pretrained(save_directory, *args, max_shard_size=max_shard_size, state_dict=state_dict, **kwargs)

    def drop_unused_vision_layers(self) -> list[str]:
        """Remove the CLIP layers after the feature layer and post_layernorm: they never reach the output, so they
        need no compute and get no gradient (DDP would flag them as unused). Their weights are kept on the CPU so
        that `save_pretrained` still writes the full checkpoint. Returns the removed parameter names."""
        clip = self.model.vision_embed_tokens.img_processor
        keep = self.config.vision_layers_used
        unused = re.compile(rf"^(post_layernorm\.|encoder\.layers\.(\d+)\.)")
        removed = {}
        for name, tensor in clip.state_dict().items():
            match = unused.match(name)
            if match and (match.group(2) is None or int(match.group(2)) >= keep):
                removed[CLIP_PREFIX + name] = tensor.detach().to("cpu", copy=True)
        clip.encoder.layers = clip.encoder.layers[:keep]
        clip.post_layernorm = nn.Identity()  # CLIP applies it to the pooled CLS token only, which is not used
        self._dropped_vision_weights.update(removed)
        return sorted(removed)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
