"""Configuration of Phi-3.5-vision: transformers' Phi-3 language model plus a CLIP tower and the HD image embedding.

`config.json` keeps the published layout (flat Phi-3 fields, `rope_scaling` of type `su`, `embd_layer` and
`img_processor` blocks) so a folder written here reads like the released model.
"""

from __future__ import annotations

import json
import os

from transformers import CLIPVisionConfig, Phi3Config
from transformers.configuration_utils import SubConfigSpec

from .errors import UserError

# The release's config file, the CLIP tower it names, and the image-token count live with the other sizes.
from .model_sizes import CLIP_VIT_L_14_336, RELEASE_CONFIG_FILE, image_token_count

# The release's own values, read from its config.json (kept in the package): the image-embedding and vision-tower
# blocks, and the LongRoPE rescale factors (one per rotary frequency, head_dim 96 / 2).
_RELEASE = json.loads(RELEASE_CONFIG_FILE.read_text(encoding="utf-8"))
OFFICIAL_EMBD_LAYER = _RELEASE["embd_layer"]
OFFICIAL_IMG_PROCESSOR = _RELEASE["img_processor"]
RELEASE_ROPE_FACTORS = {key: _RELEASE["rope_scaling"][key] for key in ("short_factor", "long_factor")}

# Keys of transformers' generic config that the published config.json does not carry.
_GENERIC_KEYS_NOT_WRITTEN = (
    "output_hidden_states", "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label",
    "label2id", "problem_type", "output_attentions", "_name_or_path",
)
# Hub-only keys of the release dropped on reading: remote-code pointers and a run-time attention choice.
_RELEASE_KEYS_NOT_KEPT = ("auto_map", "_attn_implementation")

# The release's image placeholder id: config.json leaves image_token_id out when it is this one, and a tokenizer
# without an `<|image|>` entry gets it.
DEFAULT_IMAGE_TOKEN_ID = 32044


class Phi3VConfig(Phi3Config):
    r"""Phi-3.5-vision: the Phi-3 language-model fields (inherited) plus the vision settings.

    embd_layer (`dict`): the release's image-embedding block (`hd_transform_order` "sub_glb", MLP projector,
        learnable separators).
    img_processor (`dict`): the release's vision-tower block (`image_dim_out`, `num_img_tokens`, optional
        `layer_idx` = which CLIP hidden state feeds the projector, -2 by default).
    image_token_id (`int`): the token id at image positions in `input_ids`.
    vision_config (`CLIPVisionConfig`): the CLIP tower; omitted from config.json when it is ViT-L/14-336.
    """

    model_type = "phi3_v"
    sub_configs_defaults = {"vision_config": SubConfigSpec(CLIPVisionConfig, init_kwargs=CLIP_VIT_L_14_336)}

    max_position_embeddings: int = 131072
    eos_token_id: int | list[int] | None = 2
    sliding_window: int | None = 262144
    embd_layer: dict | None = None
    img_processor: dict | None = None
    image_token_id: int = DEFAULT_IMAGE_TOKEN_ID
    vision_config: dict | CLIPVisionConfig | None = None

    def __post_init__(self, **kwargs):
        for key in _RELEASE_KEYS_NOT_KEPT:
            kwargs.pop(key, None)
        if self.rope_parameters is None and "rope_scaling" not in kwargs:
            self.rope_parameters = {
                "rope_type": "longrope",
                "short_factor": list(RELEASE_ROPE_FACTORS["short_factor"]),
                "long_factor": list(RELEASE_ROPE_FACTORS["long_factor"]),
            }
        self.embd_layer = dict(OFFICIAL_EMBD_LAYER if self.embd_layer is None else self.embd_layer)
        self.img_processor = dict(OFFICIAL_IMG_PROCESSOR if self.img_processor is None else self.img_processor)
        super().__post_init__(**kwargs)
        if self.rope_parameters.get("rope_type") == "longrope":
            self.standardize_rope_params()  # copies original_max_position_embeddings into rope_parameters
            # the ratio longrope would derive anyway; stated so transformers need not warn about deriving it
            self.rope_parameters.setdefault("factor", self.max_position_embeddings / self.original_max_position_embeddings)
        self._check_vision_settings()

    def _check_vision_settings(self) -> None:
        for key, expected in OFFICIAL_EMBD_LAYER.items():
            if self.embd_layer.get(key) != expected:
                raise UserError(
                    f"config.json: embd_layer.{key} = {self.embd_layer.get(key)!r} is not supported; "
                    f"Phi-3.5-vision uses {expected!r}."
                )
        if self.img_processor.get("name") != OFFICIAL_IMG_PROCESSOR["name"]:
            raise UserError(
                f"config.json: img_processor.name = {self.img_processor.get('name')!r} is not supported; "
                f"Phi-3.5-vision uses {OFFICIAL_IMG_PROCESSOR['name']!r}."
            )
        if self.img_processor.get("image_dim_out", self.vision_config.hidden_size) != self.vision_config.hidden_size:
            raise UserError(
                f"config.json: img_processor.image_dim_out = {self.img_processor['image_dim_out']} differs from the "
                f"CLIP hidden size {self.vision_config.hidden_size}; make them equal."
            )
        patches_per_side = self.vision_config.image_size // self.vision_config.patch_size
        if self.vision_config.image_size % self.vision_config.patch_size or patches_per_side % 2:
            raise UserError(
                f"config.json: CLIP image_size {self.vision_config.image_size} must be an even multiple of "
                f"patch_size {self.vision_config.patch_size} (patches are merged 2x2)."
            )
        if not 0 <= self.image_token_id < self.vocab_size:
            raise UserError(
                f"config: image_token_id = {self.image_token_id} is outside the vocabulary (size {self.vocab_size}); "
                "set it to the id of the tokenizer's '<|image|>' token."
            )

    # ---- sizes every image-token count derives from -----------------------------------------------------

    @property
    def vision_feature_layer(self) -> int:
        """Which CLIP hidden state feeds the projector (negative: counted from the last)."""
        return self.img_processor.get("layer_idx", -2)

    @property
    def vision_layers_used(self) -> int:
        """CLIP encoder layers that contribute to the features (23 of 24 in the release)."""
        layer = self.vision_feature_layer
        return layer if layer >= 0 else self.vision_config.num_hidden_layers + 1 + layer

    @property
    def crop_size(self) -> int:
        """Side of one crop in pixels (336 in the release)."""
        return self.vision_config.image_size

    @property
    def tokens_per_crop_side(self) -> int:
        """Image tokens along one side of a crop after the 2x2 merge (12 in the release)."""
        return self.vision_config.image_size // self.vision_config.patch_size // 2

    def image_token_count(self, h_crops: int, w_crops: int) -> int:
        """Image tokens of one image tiled into h_crops x w_crops sub-crops (sub-crops, separators, global crop)."""
        return image_token_count(h_crops, w_crops, self.tokens_per_crop_side)

    def to_phi3_config(self) -> Phi3Config:
        """transformers' own Phi-3 config for the language model alone (longrope factors included)."""
        lm_fields = {f: getattr(self, f) for f in Phi3Config.__dataclass_fields__ if f not in ("architectures",)}
        lm_fields["rope_parameters"] = dict(self.rope_parameters)
        return Phi3Config(**lm_fields)

    # ---- config.json in the release's layout -------------------------------------------------------------

    @classmethod
    def tiny(cls, vocab_size: int, **overrides) -> "Phi3VConfig":
        """Same architecture at toy widths (tests, offline demo): 2-layer LM of width 64, 2-layer CLIP of width 32
        on 56-px crops (4x4 patches -> 2x2 tokens a crop side)."""
        head_dim = 64 // 4
        settings = {
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096,
            "sliding_window": 2 * 4096,
            # same longrope code path as the release; at 4096 positions only the short factors are ever used
            "rope_parameters": {
                "rope_type": "longrope",
                "short_factor": [1.0] * (head_dim // 2),
                "long_factor": [1.0 + 0.5 * i for i in range(head_dim // 2)],
            },
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "image_token_id": vocab_size - 1,
            "img_processor": {**OFFICIAL_IMG_PROCESSOR, "image_dim_out": 32, "model_name": "tiny-clip",
                              "num_img_tokens": 4},
            "vision_config": {
                **CLIP_VIT_L_14_336, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 32,
                "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 56, "patch_size": 14,
            },
            "dtype": "float32",
        }
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "Phi3VConfig":
        source = os.path.join(str(pretrained_model_name_or_path), "config.json")
        try:
            config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        except OSError as error:
            raise UserError(f"{source}: cannot be read ({error}). Point to a model folder or a hub id.") from error
        check_is_phi3_vision(config_dict, source)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "Phi3VConfig":
        """Fields given as keywords (`from_pretrained(folder, image_token_id=...)`) replace the file's before the
        config is checked, so an override can fix what the file alone would fail on."""
        overrides = {key: kwargs.pop(key) for key in list(kwargs)
                     if key in cls.__dataclass_fields__ and key not in cls.sub_configs_defaults}
        return super().from_dict({**config_dict, **overrides}, **kwargs)

    def to_dict(self) -> dict:
        """The release's layout: `rope_scaling` {type su, factors} + `rope_theta`, `torch_dtype`, no generic keys."""
        output = super().to_dict()
        rope = dict(output.pop("rope_parameters", None) or {})
        output["rope_theta"] = rope.get("rope_theta", 10000.0)
        if rope.get("rope_type", "default") == "longrope":
            output["rope_scaling"] = {"long_factor": rope["long_factor"], "short_factor": rope["short_factor"],
                                      "type": "su"}
        else:
            output["rope_scaling"] = None
        dtype = output.pop("dtype", None)
        if dtype is not None:
            output["torch_dtype"] = dtype
        for key in _GENERIC_KEYS_NOT_WRITTEN:
            output.pop(key, None)
        if self.vision_config.to_dict() == CLIPVisionConfig(**CLIP_VIT_L_14_336).to_dict():
            output.pop("vision_config")
        else:
            output["vision_config"] = self.vision_config.to_diff_dict()
        if self.image_token_id == DEFAULT_IMAGE_TOKEN_ID:
            output.pop("image_token_id")
        return output

    def to_diff_dict(self) -> dict:
        # config.json is always written in full, the way the release ships it
        return self.to_dict()


def check_is_phi3_vision(config_dict: dict, source: str) -> None:
    """Refuse a config.json that is not Phi-3.5-vision, naming the file and the key at fault."""
    if not config_dict:
        raise UserError(f"{source}: not found. Point to a model folder (or hub id) that has a config.json.")
    model_type = config_dict.get("model_type")
    if model_type != Phi3VConfig.model_type:
        raise UserError(
            f"{source}: model_type is {model_type!r}, expected 'phi3_v'. Point to a Phi-3.5-vision model folder "
            "(e.g. microsoft/Phi-3.5-vision-instruct)."
        )
    for block in ("embd_layer", "img_processor"):
        if not isinstance(config_dict.get(block), dict):
            raise UserError(
                f"{source}: the '{block}' block is missing; a Phi-3.5-vision config.json has both 'embd_layer' "
                "and 'img_processor'."
            )

