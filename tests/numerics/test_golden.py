"""The cross-machine golden: this machine's kernels and a short training give the committed bits.

The golden is written only by `python -m phi3v.training.numerics_golden --write tests/numerics/golden.json`
(README, "CPU numerics"); these tests read it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from phi3v import numerics
from phi3v.training.numerics_golden import REGENERATE, differences, report, vendor_notes

GOLDEN = Path(__file__).with_name("golden.json")


def test_this_machine_computes_the_golden_bits():
    # a fresh process, so the pin applies before any kernel runs, whatever this one already computed
    env = {key: value for key, value in os.environ.items() if key not in ("PHI3V_NUMERICS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-m", "phi3v.training.numerics_golden", "--compare", str(GOLDEN)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def test_the_golden_covers_the_kernels_and_both_kinds_of_demo_training():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert golden["machine"]["mode"] == "pinned" and golden["machine"]["torch_threads"] == 1
    kernels = ("mm.float32", "sdpa_causal_600.bfloat16", "exp.float32", "gelu_erf.float32", "conv2d_patch.bfloat16")
    assert set(kernels) <= set(golden["probes"])
    for run in golden["training"].values():
        assert len(run["losses"]) >= 5 and len(run["weights_sha256"]) == 64


def test_a_machine_with_other_bits_is_told_which_kernel_and_which_step():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    other = copy.deepcopy(golden)
    other["machine"]["cpu_model"] = "Other CPU"
    other["probes"]["mm.float32"] = "0" * 16
    other["probes"]["exp.float32"] = "0" * 16  # MKL's vector math: differs by vendor, unused by the demo
    other["training"]["bf16-sdpa"]["losses"][3] += 1e-6
    other["training"]["fp16-eager"]["weights_sha256"] = "f" * 64

    lines = differences(golden, other)
    assert lines[0] == f"1 of {len(golden['probes'])} kernel probes differ: mm.float32"
    assert vendor_notes(golden, other) == [
        "kernels known to depend on the CPU vendor, not called by the pinned trainings, differ: exp.float32"]
    assert "training 'bf16-sdpa': loss first differs at step 4" in lines[1]
    assert lines[2].startswith("training 'fp16-eager': same losses but other weights")
    message = report(golden, other, "tests/numerics/golden.json")
    assert "Other CPU" in message and REGENERATE in message
    assert differences(golden, copy.deepcopy(golden)) == []
    only_known = copy.deepcopy(golden)
    only_known["probes"]["sdpa_causal_600.bfloat16"] = "0" * 16
    assert differences(golden, only_known) == [] and len(vendor_notes(golden, only_known)) == 1


ATTENTION_KERNEL_AFTER_A_FORWARD = """
import torch
import phi3v
from phi3v.configuration_phi3v import Phi3VConfig
from phi3v.modeling_phi3v import Phi3VForCausalLM

from phi3v import numerics

assert torch.backends.cuda.flash_sdp_enabled() and numerics._autocast_library is None
model = Phi3VForCausalLM.random_init(Phi3VConfig.tiny(vocab_size=64), attn_implementation="sdpa")
model(input_ids=torch.tensor([[5, 6, 7]]))
print(torch.backends.cuda.flash_sdp_enabled(), numerics._autocast_library is not None)
"""


def test_a_pinned_cpu_process_runs_attention_and_autocast_matmuls_through_pinned_kernels():
    """The CPU flash kernel's bf16 GEMM is MKL's vendor-dependent path: pinned, the forward turns it
    off, and CPU autocast's matmuls take the fp32 kernels; native keeps torch's own."""
    def kernels_after_forward(mode: str) -> str:
        env = {**os.environ, "PHI3V_NUMERICS": mode}
        done = subprocess.run([sys.executable, "-c", ATTENTION_KERNEL_AFTER_A_FORWARD], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    assert kernels_after_forward("pinned") == "False True"
    assert kernels_after_forward("native") == "True False"


def _pinned_cpu_kernels():
    if numerics.mode() == numerics.NATIVE:
        pytest.skip("PHI3V_NUMERICS=native: torch's own kernels")
    numerics.pin_cpu_kernels("cpu")  # process-wide; every CPU forward of the suite takes it anyway


def _seeded(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), requires_grad=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["linear", "matmul", "conv2d"])
def test_pinned_autocast_rounds_inputs_and_result_and_sums_in_fp32(op, dtype):
    """A GPU's reduced-precision GEMM: inputs rounded to bf16/fp16, an fp32 product, the result
    rounded; the backward's GEMMs the same way, through the casts. (Sums of 256 or more terms, so
    that torch's own kernels, which sum in another order, give other bits: checked.)"""
    _pinned_cpu_kernels()
    compute, shapes = {
        "linear": (lambda x, w, b: F.linear(x, w, b), [(4, 64, 256), (64, 256), (64,)]),
        "matmul": (lambda x, w, b: x @ w, [(2, 4, 40, 256), (256, 40), None]),
        "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=8), [(2, 16, 64, 64), (32, 16, 8, 8), (32,)]),
    }[op]
    x, w, b = (_seeded(*shape, seed=seed) if shape else None for seed, shape in enumerate(shapes))
    with torch.autocast("cpu", dtype=dtype):
        result = compute(x, w, b)
    weights = torch.linspace(-1, 1, result.numel()).reshape(result.shape)
    (result.float() * weights).sum().backward()

    def rounded(tensor):
        return tensor.detach().to(dtype).float().requires_grad_() if tensor is not None else None

    x32, w32, b32 = rounded(x), rounded(w), rounded(b)
    expected = compute(x32, w32, b32).to(dtype)
    expected_x_grad = torch.autograd.grad(expected.float(), x32, weights.to(dtype).float())[0].to(dtype).float()
    assert result.dtype == dtype and torch.equal(result, expected)
    assert x.grad.dtype == torch.float32 and torch.equal(x.grad, expected_x_grad)


def test_pinned_autocast_leaves_integer_and_float64_matmuls_as_autocast_does():
    _pinned_cpu_kernels()
    integers = torch.arange(6).reshape(2, 3)
    doubles = torch.randn(2, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(integers @ integers.T, torch.tensor([[5, 14], [14, 50]]))
        product = doubles @ doubles.T
    assert product.dtype == torch.float64 and torch.equal(product, doubles @ doubles.T)
