"""CPU numerics pinned to one instruction set and thread count, so a CPU run gives the same bits on
every x86-64 machine with AVX2.

The kernels of ATen, oneDNN and MKL pick the widest instruction set the CPU has (AVX2, AVX-512,
AMX) and split sums over the threads; each choice rounds differently, so the same seed gave other
demo scores on another machine. Measured on a tiny training (AVX-512 machine, 12 steps), each of
these alone changes the weights: ATen's capability (avx2 vs AVX512), oneDNN's ISA cap (AVX2 vs
AVX512_CORE), MKL's code path (`MKL_ENABLE_INSTRUCTIONS=AVX2`) and the thread count (1 vs 2).
Pinned, the first three no longer matter; the thread count is part of the pin. Runs on one
machine are already bit-identical run to run, so `torch.use_deterministic_algorithms` adds nothing
on the CPU and is not set.

Across CPU vendors (an Intel Xeon with AMX against an AMD EPYC's kernel probe and demo losses) the
kernels that still part them are MKL's: MKL picks its code path by vendor as well as by ISA, while
every probe of an ATen or oneDNN kernel agrees under the caps. What differed, and what pins it:
- fp32 GEMM (matmul, linear, bmm, fp32 SDPA): `MKL_CBWR=AVX2,STRICT` gives on the Intel machine
  exactly the AMD machine's `MKL_CBWR=AVX2` bits.
- not pinnable with MKL's knobs: its vector math (fp32 exp, log, erf: `torch.exp`...) takes a generic
  path on AMD that Intel takes only under `MKL_CBWR=COMPATIBLE` or an AVX cap, both of which move the
  GEMMs off the AMD path; and its bf16xbf16->fp32 GEMM inside the CPU flash-attention kernel (bf16
  SDPA), which no MKL setting on the Intel machine makes match (the demo's pre-training first
  differs at step 16). A 3-step MLP + AdamW probe (MKL GEMMs, oneDNN's fp32 GELU) differs too.
So a process computing on a pinned CPU takes other kernels (`pin_cpu_kernels`, from the model's
forward): attention through SDPA's math kernel, which computes in fp32 through MKL's SGEMM, and
CPU autocast's bf16/fp16 matmuls and convolutions as fp32 kernels on rounded inputs (ATen's own are
reference loops once oneDNN is capped; the same arithmetic as a GPU's, and faster). The golden's
trainings then call no MKL function but SGEMM (`MKL_VERBOSE=1`).
`python -m phi3v.training.numerics_golden --compare tests/numerics/golden.json` checks a machine
against the committed golden and names the kernels that differ.

All of these are read by the libraries when their first kernel runs (not at `import torch`,
except OpenMP's thread count, which `pin` also sets through torch), so `phi3v/__init__.py` calls
`pin()`: every entry point (`python -m phi3v...`, the workflow's scripts, torchrun's processes)
imports the package before it computes anything. `PHI3V_NUMERICS=native` keeps the machine's own
kernels (faster on AVX-512/AMX machines, but its numbers are its own).
"""

from __future__ import annotations

import os
import sys
from typing import MutableMapping

MODE_VARIABLE = "PHI3V_NUMERICS"
NATIVE = "native"
PINNED = "pinned"
THREADS_VARIABLE = "OMP_NUM_THREADS"
# The oldest instruction set the README supports (x86-64 since 2013/2015); wider ones are capped.
PINNED_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's own vectorised kernels (reductions, softmax, norms, bf16 gemm)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (mkldnn) matmuls and convolutions
    # MKL's conditional numerical reproducibility: one code path for its GEMMs; STRICT also makes Intel
    # take the path AMD takes (measured against the AMD probe), plain AVX2 does not.
    "MKL_CBWR": "AVX2,STRICT",
    # An explicit MKL_ENABLE_INSTRUCTIONS=AVX512 wins over MKL_CBWR (measured), so it is capped too.
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
# The demo's jobs run one thread each (presets/demo.yaml); a direct run matches them unless told otherwise.
DEFAULT_THREADS = 1


def mode(env: MutableMapping[str, str] = os.environ) -> str:
    return NATIVE if env.get(MODE_VARIABLE, PINNED).strip().lower() == NATIVE else PINNED


def pin(env: MutableMapping[str, str] = os.environ) -> None:
    """Cap the CPU kernels at AVX2 and fix the thread count (`OMP_NUM_THREADS`, default 1), unless
    `PHI3V_NUMERICS=native`. Overrides any ISA setting already in `env`: that is what makes two
    machines agree."""
    if mode(env) == NATIVE:
        return
    env.update(PINNED_ENVIRONMENT)
    env.setdefault(THREADS_VARIABLE, str(DEFAULT_THREADS))
    # OpenMP read its thread count when torch was loaded; a torch imported before us is told again.
    if env is os.environ and "torch" in sys.modules:
        set_threads(int(env[THREADS_VARIABLE]))


def pin_cpu_kernels(device) -> None:
    """Under pinned numerics, a process computing on the CPU takes kernels whose bits do not depend on
    the CPU vendor (the model's forward calls this). Process-wide, not a context, so the backward and
    gradient checkpointing's recomputation take the same kernels. GPUs and `PHI3V_NUMERICS=native`
    keep the fastest kernels.
    - Attention runs through SDPA's math kernel: the CPU flash kernel's bf16 GEMM takes MKL's
      vendor-dependent path, which no MKL setting pins; the math kernel computes in fp32 through MKL's
      SGEMM, which `MKL_CBWR=AVX2,STRICT` pins. (It also turns off CUDA's flash kernel, which a process
      computing on the CPU does not use.)
    - Matmuls and convolutions under CPU autocast compute in fp32: see `_autocast_through_fp32`."""
    if getattr(device, "type", device) != "cpu" or mode() == NATIVE:
        return
    import torch

    if torch.backends.cuda.flash_sdp_enabled():  # the flag both CPU and CUDA kernel choices read
        torch.backends.cuda.enable_flash_sdp(False)
    if _autocast_library is None:
        _autocast_through_fp32()


# The CPU autocast ops the model computes in bf16/fp16 (linear, eager attention's matmul, CLIP's patch
# convolution), and the matmuls they decompose into, which other code may call under autocast directly.
AUTOCAST_FP32_OPS = ("linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "conv2d", "conv2d.padding")
_autocast_library = None  # the registration; kept alive, as torch.library requires


def _autocast_through_fp32() -> None:
    """Compute CPU autocast's bf16/fp16 matmuls and convolutions as fp32 kernels on inputs rounded to
    the autocast dtype, rounding the result to it: a GPU's tensor-core arithmetic (reduced-precision
    inputs, exact products, fp32 sums, a reduced-precision result), in the backward too, since the
    roundings are casts autograd differentiates.

    Why: with oneDNN capped at AVX2 (the pin), ATen runs bf16/fp16 GEMMs through its reference
    loops, which were about two thirds of a demo training step (a 2.5-MFLOP GEMM in 1.4 ms); MKL's
    SGEMM on the same values is pinned by `MKL_CBWR`, and the demo's training loops ran 2.2-3.1x
    faster with it (README). CPU autocast's kernels cannot be chosen through any setting, so these
    ops get their own AutocastCPU kernel (`torch.library`), which replaces the built-in one."""
    global _autocast_library
    import warnings

    import torch

    def through_fp32(op):
        def kernel(*args, **kwargs):
            dtype = torch.get_autocast_dtype("cpu")

            def rounded(value):  # what autocast casts (floating tensors but float64), rounded, then fp32
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
                    return value.to(dtype).float()
                return value

            with torch.autocast("cpu", enabled=False):
                result = op(*map(rounded, args), **{key: rounded(value) for key, value in kwargs.items()})
            return result.to(dtype) if result.dtype == torch.float32 else result
        return kernel

    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "Overriding a previously registered kernel": the point
        warnings.simplefilter("ignore")
        for name in AUTOCAST_FP32_OPS:
            packet, _, overload = name.partition(".")
            library.impl(name, through_fp32(getattr(getattr(torch.ops.aten, packet), overload or "default")),
                         "AutocastCPU")
    _autocast_library = library


def set_threads(threads: int) -> None:
    """The intra-op thread count (a job's `threads`): part of the numerics, since sums are split by it."""
    os.environ[THREADS_VARIABLE] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def settings() -> dict:
    """What decided this process's CPU numerics, for provenance."""
    import torch

    return {
        "mode": mode(),
        **{name: os.environ.get(name) for name in (*PINNED_ENVIRONMENT, THREADS_VARIABLE)},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
    }


def cpu_model() -> str | None:
    """The CPU's marketing name (`model name` in /proc/cpuinfo), else the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None
