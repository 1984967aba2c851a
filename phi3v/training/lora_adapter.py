"""A LoRA adapter's files: saving them, checking that they belong to a base model, merging them into it.

peft merges any adapter whose tensors happen to fit, and fails with a bare size-mismatch traceback when
they do not. Two checks come first, each one clear error:

- the base the adapter names (`base_model_name_or_path` in adapter_config.json, what the training
  loaded) is the base given: the same name or folder, a copy with the same weights, or the download of
  that hub id (the folder's provenance.json names it);
- every adapter tensor fits the base module it adapts (read from the adapter's safetensors header).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from phi3v.errors import UserError
from phi3v.model_files import safetensors_header
from phi3v.provenance import MODEL_SOURCE_FILE

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft's name of the wrapped model in saved keys


def adapter_config(adapter_dir: Path) -> dict:
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file():
        raise UserError(f"{adapter_dir}: no {ADAPTER_CONFIG} — give the folder a LoRA run wrote (its adapter/).")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}): restore the adapter folder from the run that wrote it.") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} must hold a JSON object: restore the adapter folder from the run that wrote it.")
    return config


def check_adapter_base(adapter_dir: str | os.PathLike, base_model: str | os.PathLike) -> None:
    """Refuse an adapter whose adapter_config.json names another base model than `base_model`."""
    adapter_dir = Path(adapter_dir)
    recorded = adapter_config(adapter_dir).get("base_model_name_or_path")
    if not recorded or same_model(str(recorded), str(base_model)):
        return
    raise UserError(
        f"{adapter_dir / ADAPTER_CONFIG} says the adapter was trained on {recorded!r} (base_model_name_or_path), "
        f"not on {str(base_model)!r}: merge it into the base it was trained on. If {str(base_model)!r} is that "
        "model under another name or path, pass --other-base."
    )


def same_model(recorded: str, given: str) -> bool:
    """Whether two model names mean the same model: equal names, one folder (or a copy of its weights),
    or a folder downloaded from the recorded hub id."""
    if recorded == given:
        return True
    recorded_path, given_path = Path(recorded), Path(given)
    if recorded_path.is_dir() and given_path.is_dir():
        return recorded_path.resolve() == given_path.resolve() or weight_digests(recorded_path) == weight_digests(given_path)
    return hub_id_of(given_path) == recorded


def weight_digests(folder: Path) -> dict:
    from .fingerprint import model_digests

    return {name: digest for name, digest in model_digests(folder).items() if name.endswith(".safetensors")}


def hub_id_of(folder: Path) -> str | None:
    """The hub id a downloaded model folder came from (its provenance.json), if it says."""
    try:
        return json.loads((folder / MODEL_SOURCE_FILE).read_text(encoding="utf-8"))["model"]["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_adapter_fits(adapter_dir: str | os.PathLike, base: nn.Module, base_name: str) -> None:
    """Refuse an adapter with a tensor for a module the base lacks, or of a shape the module does not have."""
    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        return  # an old-style adapter_model.bin: peft checks it when it loads
    _, header = safetensors_header(weights, fix="copy the adapter folder again, or rerun the training that wrote it")
    misfits = [why for key, entry in header.items() if key != "__metadata__"
               if (why := tensor_misfit(key, entry["shape"], base)) is not None]
    if misfits:
        shown = "; ".join(misfits[:3]) + (f"; and {len(misfits) - 3} more" if len(misfits) > 3 else "")
        raise UserError(f"{weights} does not fit the base model {base_name}: {shown}. The adapter was trained on "
                        "another model: merge it into the base it was trained on.")


def tensor_misfit(key: str, shape: list[int], base: nn.Module) -> str | None:
    """Why one saved LoRA tensor cannot adapt its module of `base` (None: it fits, or is not a LoRA matrix)."""
    name = key.removeprefix(PEFT_PREFIX)
    module_name, _, part = name.rpartition(".lora_")
    if not part:
        return None
    part = part.removesuffix(".weight")  # A, B, embedding_A, embedding_B
    try:
        module = base.get_submodule(module_name)
    except AttributeError:
        dropped = getattr(base, "_dropped_vision_weights", {})  # CLIP layers that never reach the output
        if any(name.startswith(module_name + ".") for name in dropped):
            return None
        return f"{key} adapts {module_name}, which the base does not have"
    if isinstance(module, nn.Linear):
        needed = {"A": (1, module.in_features), "B": (0, module.out_features)}.get(part)
    elif isinstance(module, nn.Embedding):
        needed = {"embedding_A": (1, module.num_embeddings), "embedding_B": (0, module.embedding_dim)}.get(part)
    else:
        return None
    if needed is None or len(shape) != 2 or shape[needed[0]] == needed[1]:
        return None
    return f"{key} has shape {shape} but {module_name} is {type(module).__name__}{tuple(module.weight.shape)}"


def save_adapter(model, folder: Path) -> None:
    """The LoRA weights and `adapter_config.json`, the same bytes for the same run."""
    for config in model.peft_config.values():
        # peft keeps target_modules as a set and writes list(set): an order that changes with the hash seed
        for key, value in vars(config).items():
            if isinstance(value, set):
                setattr(config, key, sorted(value))
    model.save_pretrained(folder, save_embedding_layers=False)  # only LoRA weights train


def export_merged_lora(base_model: Path, adapter_dir: Path, folder: Path) -> None:
    """Merge the adapter into a fresh full-precision base (every CLIP layer back) and save it."""
    from peft import PeftModel

    from phi3v.modeling_phi3v import Phi3VForCausalLM

    base = Phi3VForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    saved_dtype = base.config.dtype or torch.float32  # the base checkpoint's own dtype
    base.drop_unused_vision_layers()  # as in training: the adapter has nothing there; saving restores them
    check_adapter_fits(adapter_dir, base, str(base_model))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.to(getattr(torch, str(saved_dtype).removeprefix("torch.")))
    merged.save_pretrained(folder)
