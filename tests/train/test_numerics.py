"""Pinned CPU numerics: a direct `python -m phi3v.training.train` gives the same weights whatever
instruction set the machine offers (simulated here with the libraries' own ISA caps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from phi3v.provenance import sha256_file

from .conftest import DATASET, base_run

# Two "machines": the widest kernels every library would pick on an AVX-512/AMX CPU, and an AVX2-only CPU.
WIDE_ISA = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX",
            "MKL_ENABLE_INSTRUCTIONS": "AVX512"}
AVX2_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def train_in_subprocess(isa, base, data, out, ckpt):
    env = {key: value for key, value in os.environ.items()
           if key not in ("PHI3V_NUMERICS", "OMP_NUM_THREADS", "MKL_CBWR")}
    command = [sys.executable, "-m", "phi3v.training.train", "--run-json", base_run(max_steps=6).to_json(),
               "--base-model", str(base), "--data-dir", str(data), "--dataset", DATASET,
               "--out-dir", str(out), "--checkpoint-dir", str(ckpt)]
    done = subprocess.run(command, env={**env, **isa}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return sha256_file(out / "model" / "model.safetensors"), json.loads((out / "provenance.json").read_text())


@pytest.mark.slow
def test_two_instruction_sets_give_identical_weights(tiny_base, tiny_data, tmp_path):
    wide, wide_provenance = train_in_subprocess(WIDE_ISA, tiny_base, tiny_data, tmp_path / "wide", tmp_path / "c1")
    avx2, _ = train_in_subprocess(AVX2_ISA, tiny_base, tiny_data, tmp_path / "avx2", tmp_path / "c2")
    assert wide == avx2
    numerics = wide_provenance["numerics"]
    assert numerics["mode"] == "pinned" and numerics["cpu_capability"] == "AVX2"
    assert numerics["ONEDNN_MAX_CPU_ISA"] == "AVX2" and numerics["torch_threads"] == 1
    assert wide_provenance["hardware"]["cpu_model"]
