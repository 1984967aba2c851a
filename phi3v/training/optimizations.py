"""Settings beyond the recipe that change how fast a step runs, never what it computes.

Each is a `RunConfig` field, off by default; a test shows the loss and gradients equal the plain
step's. Applied by `apply_optimizations` to the model `build_model` returns, before Accelerate
wraps it; what this machine cannot do is refused by `check_optimizations` at run start.

- `checkpointed_layers`: selective activation checkpointing, only the first N decoder layers
  recompute in backward (the memory fit in `memory_fit` picks N).
- `compile_layers`: regional compilation, `torch.compile` of each decoder and CLIP layer: one
  compiled graph serves every layer of a kind, so compiling takes seconds, not minutes.
- `fused_kernels`: Liger's Triton kernels for RMSNorm, SwiGLU and RoPE in the language model.
- `frozen_vision_no_grad`: a vision tower without trainable weights runs under `torch.no_grad`, so
  autograd records nothing there whatever makes the inputs require grad.
Padding-free batches need no setting here: `packing: true` (phi3v.data.collate.collate_packed).
"""

from __future__ import annotations

import importlib.util

import torch

from ..errors import UserError
from .run_config import ROW_SETTINGS, RunConfig

COMPILE_BACKEND = "inductor"  # torch.compile's default; tests on CPUs trace with "aot_eager"

OPTION_SETTINGS = (*ROW_SETTINGS, "attention")  # what a speed row reports as "the settings used"


def fused_kernels_unavailable(device: torch.device) -> str | None:
    """None when Liger's kernels can run here, else the reason they cannot."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel; it needs triton and a CUDA GPU)"
    if device.type != "cuda":
        return f"Liger's kernels are Triton GPU kernels and this run is on {device.type}"
    return None


def check_optimizations(run: RunConfig, device: torch.device) -> None:
    """Refuse at start a setting this machine cannot honour (UserError naming why and the fix)."""
    if run.fused_kernels:
        reason = fused_kernels_unavailable(device)
        if reason:
            raise UserError(f"run {run.run!r}: fused_kernels: true but {reason} — set fused_kernels: false")
    if run.compile_layers and device.type == "cpu" and not _has_cxx_compiler():
        raise UserError(f"run {run.run!r}: compile_layers: true needs a C++ compiler for torch.compile on "
                        "a CPU (none found) — install gcc, or set compile_layers: false")


def _has_cxx_compiler() -> bool:
    import shutil

    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def core_model(model):
    """The `Phi3VForCausalLM` inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> torch.nn.ModuleList:
    return core_model(model).model.layers


def clip_layers(model) -> torch.nn.ModuleList:
    return core_model(model).model.vision_embed_tokens.img_processor.encoder.layers


def set_checkpointed_layers(model, count: int | None) -> None:
    """Recompute only the first `count` decoder layers (None: every layer); checkpointing must be on."""
    for index, layer in enumerate(decoder_layers(model)):
        layer.gradient_checkpointing = count is None or index < count


def run_frozen_vision_without_grad(model) -> bool:
    """Run the image embedding under no_grad when none of its weights train; True if it does."""
    vision = core_model(model).model.vision_embed_tokens
    if any(param.requires_grad for param in vision.parameters()):
        return False
    # an instance attribute shadows the class's forward; hooks and checkpointing stay as they are
    vision.forward = torch.no_grad()(vision.forward)
    return True


def apply_fused_kernels(model) -> None:
    """Liger's RMSNorm, SwiGLU and RoPE on the language model's modules (the loss stays ours)."""
    from liger_kernel.transformers import apply_liger_kernel_to_phi3

    apply_liger_kernel_to_phi3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                               fused_linear_cross_entropy=False, model=core_model(model))


def compile_layers(model) -> None:
    """Regional compilation: each decoder and CLIP layer module compiled in place (`Module.compile`)."""
    for layer in [*decoder_layers(model), *clip_layers(model)]:
        layer.compile(backend=COMPILE_BACKEND)


def apply_optimizations(model, run: RunConfig):
    """Apply the run's settings beyond the recipe to a built model (in place); returns the model.

    Kernels are swapped before compiling, so the compiled graphs hold the fused kernels.
    """
    if run.fused_kernels:
        apply_fused_kernels(model)
    if run.gradient_checkpointing and run.checkpointed_layers is not None:
        set_checkpointed_layers(model, run.checkpointed_layers)
    if run.frozen_vision_no_grad:
        run_frozen_vision_without_grad(model)
    if run.compile_layers:
        compile_layers(model)
    return model


def settings_of(run: RunConfig) -> dict:
    """The speed-relevant settings a run used, as plain data (speed rows and tables report them)."""
    return {key: getattr(run, key) for key in OPTION_SETTINGS}

