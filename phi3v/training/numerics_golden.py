"""The cross-machine golden: does this machine compute the same bits as the one that wrote the golden?

    python -m phi3v.training.numerics_golden --write tests/numerics/golden.json    # (re)write the golden
    python -m phi3v.training.numerics_golden --compare tests/numerics/golden.json  # what the test runs

Two parts, both under the pinned numerics of `phi3v.numerics` (1 thread):
- `probes`: the sha256 of one result per CPU kernel the demo uses (matmuls of each library, attention,
  norms, activations, reductions, an optimizer step, random draws) on fixed inputs. A probe that
  differs names the kernel, and so the library, whose code path depends on the CPU.
- `training`: the per-step losses and the weights' sha256 of a short training of the tiny model, once
  the way the demo's bf16 rows train (fp32 weights, bf16 autocast, SDPA) and once the way its fp16
  rows train (fp16 autocast, eager attention). The first differing step shows whether it matters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from phi3v import numerics
from phi3v.errors import UserError, entry_point
from .run_config import precision_dtype

REGENERATE = "python -m phi3v.training.numerics_golden --write tests/numerics/golden.json"
# Long enough that the CPU flash-attention kernel takes its blocked path (MKL's bf16 GEMM); short enough for seconds.
TRAINING_TOKENS = 320
TRAINING_STEPS = 6


def digest(tensor: torch.Tensor) -> str:
    tensor = tensor.detach().contiguous()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.view(torch.int16)  # numpy has no bf16: hash the bits
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()[:16]


def seeded(*shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def probes() -> dict[str, str]:
    """One hash per kernel (the probe of ../shared/cross-machine/numerics_probe.py, plus the kernels it missed)."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        n = str(dtype).removeprefix("torch.")
        a, b = seeded(64, 96, dtype=dtype, seed=1), seeded(96, 80, dtype=dtype, seed=2)
        out[f"mm.{n}"] = a @ b  # fp32: MKL's SGEMM; bf16, fp16: ATen's reference loops (outside autocast)
        w, x = seeded(80, 96, dtype=dtype, seed=3), seeded(2, 37, 96, dtype=dtype, seed=4)
        out[f"linear.{n}"] = F.linear(x, w, seeded(80, dtype=dtype, seed=5))
        out[f"bmm.{n}"] = torch.bmm(seeded(4, 33, 24, dtype=dtype, seed=6), seeded(4, 24, 33, dtype=dtype, seed=7))
        image, kernel = seeded(2, 3, 56, 56, dtype=dtype, seed=8), seeded(32, 3, 14, 14, dtype=dtype, seed=9)
        out[f"conv2d_patch.{n}"] = F.conv2d(image, kernel, stride=14)
        q, k, v = (seeded(2, 4, 50, 24, dtype=dtype, seed=s) for s in (10, 11, 12))
        out[f"sdpa_causal.{n}"] = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # the flash kernel's blocked path at demo lengths: MKL's bf16/fp16 GEMM (not covered by 50 tokens)
        q, k, v = (seeded(1, 4, 600, 16, dtype=dtype, seed=s) for s in (40, 41, 42))
        out[f"sdpa_causal_600.{n}"] = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        with sdpa_kernel(SDPBackend.MATH):  # what the model's forward runs (numerics.pin_cpu_kernels)
            out[f"sdpa_model_600.{n}"] = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out[f"softmax.{n}"] = torch.softmax(seeded(8, 300, dtype=dtype, seed=13), dim=-1)
        h = seeded(4, 50, 96, dtype=dtype, seed=14)
        weight, bias = seeded(96, dtype=dtype, seed=15), seeded(96, dtype=dtype, seed=16)
        out[f"layer_norm.{n}"] = F.layer_norm(h, (96,), weight, bias)
        hf = h.float()
        out[f"rms_norm_manual.{n}"] = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
        out[f"silu.{n}"] = F.silu(h)
        out[f"gelu_tanh.{n}"] = F.gelu(h, approximate="tanh")
        out[f"gelu_erf.{n}"] = F.gelu(h)  # fp32: oneDNN's eltwise kernel
        out[f"quick_gelu.{n}"] = h * torch.sigmoid(1.702 * h)
        out[f"exp.{n}"] = torch.exp(h)  # fp32: MKL's vector math (VML)
        out[f"sum_last.{n}"] = h.sum(-1)
        out[f"mean_all.{n}"] = h.float().mean().reshape(1)
    wide = seeded(100_000, seed=43)
    for name in ("log", "erf", "tanh", "sin", "cos"):  # fp32: MKL's vector math (VML)
        out[f"{name}.float32"] = getattr(torch, name)(wide.abs() if name == "log" else wide)
    positions = torch.arange(0, 512, dtype=torch.float32)[:, None] * (10000 ** (-torch.arange(0, 48, 2) / 48))[None]
    out["rope_sin_cos.float32"] = torch.cat([positions.sin(), positions.cos()], -1)
    logits = seeded(64, 512, seed=17)
    labels = torch.randint(0, 512, (64,), generator=torch.Generator().manual_seed(18))
    out["cross_entropy.float32"] = F.cross_entropy(logits, labels).reshape(1)
    out["log_softmax.float32"] = F.log_softmax(logits, -1)
    for foreach in (True, False):  # autograd through linear + GELU + linear, clipping, then AdamW
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(96, 128), torch.nn.GELU(), torch.nn.Linear(128, 96))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-7, weight_decay=0.01,
                                      foreach=foreach)
        for step in range(3):
            model(seeded(16, 96, seed=20 + step)).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        out[f"adamw_3_steps.foreach_{foreach}"] = torch.cat([p.detach().flatten() for p in model.parameters()])
    out.update(autocast_probes())
    torch.manual_seed(123)
    out["randn_global.float32"] = torch.randn(1000)
    out["dropout.float32"] = F.dropout(torch.ones(1000), 0.1, training=True)
    embedding = torch.nn.Embedding(100, 32)
    torch.nn.init.normal_(embedding.weight, generator=torch.Generator().manual_seed(40))
    embedding(torch.randint(0, 100, (4, 50), generator=torch.Generator().manual_seed(41))).pow(2).sum().backward()
    out["embedding_backward.float32"] = embedding.weight.grad
    return {name: digest(tensor) for name, tensor in sorted(out.items())}


def autocast_probes(prefix: str = "") -> dict[str, torch.Tensor]:
    """CPU autocast's reduced-precision matmuls and convolution: torch's own kernels, or after
    `numerics.pin_cpu_kernels` (process-wide) the ones the model computes with (`prefix` "pinned_")."""
    out = {}
    for dtype in (torch.bfloat16, torch.float16):
        n = str(dtype).removeprefix("torch.")
        with torch.autocast("cpu", dtype=dtype):
            out[f"{prefix}autocast_linear.{n}"] = F.linear(seeded(2, 37, 96, seed=30), seeded(80, 96, seed=31))
            out[f"{prefix}autocast_matmul.{n}"] = seeded(2, 4, 33, 24, seed=32) @ seeded(2, 4, 24, 33, seed=33)
            out[f"{prefix}autocast_conv2d_patch.{n}"] = F.conv2d(seeded(2, 3, 56, 56, seed=34),
                                                                 seeded(32, 3, 14, 14, seed=35), stride=14)
    return out


def tiny_training(precision: str, attention: str) -> dict:
    """A few AdamW steps of the tiny model on fixed random samples (one image each), as the demo trains:
    fp32 weights computing under `precision` autocast. Returns the per-step losses and the weights' hash."""
    from phi3v.configuration_phi3v import Phi3VConfig
    from phi3v.modeling_phi3v import Phi3VForCausalLM

    config = Phi3VConfig.tiny(vocab_size=512)
    torch.manual_seed(0)
    model = Phi3VForCausalLM.random_init(config, attn_implementation=attention).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), eps=1e-7, weight_decay=0.01)
    generator = torch.Generator().manual_seed(1)
    image_tokens = config.image_token_count(1, 1)
    losses = []
    for _ in range(TRAINING_STEPS):
        text = torch.randint(3, config.image_token_id, (2, TRAINING_TOKENS - image_tokens), generator=generator)
        input_ids = torch.cat([torch.full((2, image_tokens), config.image_token_id), text], dim=1)
        labels = torch.cat([torch.full((2, image_tokens), -100), text], dim=1)
        pixel_values = torch.randn(4, 3, config.crop_size, config.crop_size, generator=generator)  # 2 images x 2 crops
        image_sizes = torch.full((2, 2), config.crop_size)
        with torch.autocast("cpu", dtype=precision_dtype(precision)):
            loss = model(input_ids=input_ids, labels=labels, pixel_values=pixel_values, image_sizes=image_sizes).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return {"losses": losses, "weights_sha256": weights.hexdigest()}


def measure() -> dict:
    """Everything the golden holds, computed on this machine."""
    if numerics.mode() != numerics.PINNED:
        raise UserError(f"{numerics.MODE_VARIABLE}=native: the golden is for pinned numerics — unset it")
    numerics.set_threads(1)
    library_kernels = probes()  # torch's own kernels, before the model's forward pins some (process-wide)
    numerics.pin_cpu_kernels("cpu")
    pinned = {name: digest(tensor) for name, tensor in autocast_probes("pinned_").items()}
    return {
        "machine": {"cpu_model": numerics.cpu_model(), "platform": platform.platform(), "torch": torch.__version__,
                    **numerics.settings()},
        "probes": dict(sorted({**library_kernels, **pinned}.items())),
        "training": {"bf16-sdpa": tiny_training("bf16", "sdpa"), "fp16-eager": tiny_training("fp16", "eager")},
    }


# Kernels measured to differ between an Intel and an AMD CPU under the pin (MKL's vector math, its bf16
# GEMM in SDPA's flash kernel, the AdamW probe that mixes MKL GEMMs with an erf GELU) which the trainings
# below (the demo's forward, backward and AdamW, pinned) do not call: `MKL_VERBOSE=1` shows SGEMM alone.
# A difference there is reported, not failed; a difference in the trainings fails.
VENDOR_DEPENDENT = frozenset({
    "adamw_3_steps.foreach_False", "adamw_3_steps.foreach_True", "exp.float32", "log.float32", "erf.float32",
    "gelu_erf.float32", "sdpa_causal_600.bfloat16", "sdpa_causal_600.float16",
})


def differing_probes(golden: dict, current: dict) -> list[str]:
    return sorted(name for name, value in current["probes"].items() if golden["probes"].get(name) != value)


def vendor_notes(golden: dict, current: dict) -> list[str]:
    """Differing kernels the pinned trainings do not call (`VENDOR_DEPENDENT`): said, not failed."""
    known = [name for name in differing_probes(golden, current) if name in VENDOR_DEPENDENT]
    return [f"kernels known to depend on the CPU vendor, not called by the pinned trainings, differ: {', '.join(known)}"] if known else []


def differences(golden: dict, current: dict) -> list[str]:
    """What differs between two measurements and matters for the demo's numbers, one line each:
    kernels by name, trainings by first step."""
    lines = []
    differing = [name for name in differing_probes(golden, current) if name not in VENDOR_DEPENDENT]
    missing = sorted(set(golden["probes"]) - set(current["probes"]))
    if differing:
        lines.append(f"{len(differing)} of {len(current['probes'])} kernel probes differ: {', '.join(differing)}")
    if missing:
        lines.append(f"probes in the golden that this code no longer measures: {', '.join(missing)}")
    for name, run in golden["training"].items():
        mine = current["training"].get(name)
        if mine is None:
            lines.append(f"training {name!r}: not measured by this code")
            continue
        first = next((step for step, (a, b) in enumerate(zip(run["losses"], mine["losses"]), start=1) if a != b), None)
        if first is not None:
            lines.append(f"training {name!r}: loss first differs at step {first} "
                         f"(golden {run['losses'][first - 1]!r}, here {mine['losses'][first - 1]!r})")
        elif run["weights_sha256"] != mine["weights_sha256"] or len(run["losses"]) != len(mine["losses"]):
            lines.append(f"training {name!r}: same losses but other weights (golden {run['weights_sha256'][:16]}, "
                         f"here {mine['weights_sha256'][:16]})")
    return lines


def report(golden: dict, current: dict, golden_path: str) -> str:
    """The message of a machine whose numerics differ from the golden's."""
    theirs, mine = golden["machine"], current["machine"]
    return "\n".join([
        f"this machine ({mine.get('cpu_model')}, torch {mine.get('torch')}) computes other bits than the one "
        f"that wrote {golden_path} ({theirs.get('cpu_model')}, torch {theirs.get('torch')}):",
        *(f"  - {line}" for line in differences(golden, current)),
        "A differing probe names a kernel whose code path depends on the CPU (or on the library versions): the "
        "demo's tables made here will not reproduce the committed ones bit for bit (README, 'CPU numerics').",
        f"If this machine is the new reference (new pin, new torch), rewrite the golden: {REGENERATE}",
    ])


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi3v.training.numerics_golden",
                                     description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="JSON", help="measure this machine and write the golden there")
    action.add_argument("--compare", metavar="JSON", help="measure this machine and compare with that golden")
    args = parser.parse_args(argv)
    current = measure()
    if args.write:
        from phi3v.files import write_json_atomic

        write_json_atomic(Path(args.write), current)
        print(f"wrote {args.write}: {len(current['probes'])} probes, trainings {', '.join(current['training'])}")
        return 0
    try:
        golden = json.loads(Path(args.compare).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{args.compare}: cannot read the golden ({error}) — write it with {REGENERATE}") from None
    for line in vendor_notes(golden, current):
        print(line)
    if differences(golden, current):
        print(report(golden, current, args.compare), file=sys.stderr)
        return 1
    print(f"same bits as {args.compare}: {len(current['probes'])} probes, trainings {', '.join(current['training'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
