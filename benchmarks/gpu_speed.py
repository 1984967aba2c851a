"""One-call GPU speed benchmark: each strategy at the DocVQA shape, the recipe's settings and ours.

    python benchmarks/gpu_speed.py [--out DIR] [--no-install]    # a fresh GPU machine, only the repo
    python benchmarks/gpu_speed.py --tiny                        # the same code path on a CPU, tiny shapes
    python benchmarks/gpu_speed.py --install-only [--no-kernels] # install, then show the package imports

Installs what it needs (`pip install --no-build-isolation -e .[qlora,deepspeed]`; flash-attn the way
it is meant to be installed, `pip install --no-build-isolation flash-attn`, whose setup fetches the
prebuilt wheel matching torch and CUDA, within a time limit; liger-kernel), then runs itself again in
a fresh interpreter, the first that can import the editable install. It builds the full-size model
with random weights from the release's config in the repo (phi3v/configs/phi35v_config.json; no hub),
writes DocVQA-shaped square pages (num_crops 16: 17 crops of 336 px, 2509 image tokens + the text
~ 2560 tokens), then measures full fine-tuning, frozen vision, LoRA and QLoRA, each with the recipe's
settings (per-device batch 1, gradient checkpointing, bf16, flash attention where installed) and with
this project's best settings (a memory-fitted batch, packing where flash attention runs, compiled
layers, fused kernels, frozen vision without autograd). Every row is `phi3v.training.speed.run_speed`
(the workflow's speed rule). Writes `<out>/gpu_speed.jsonl` (one line a row) and `<out>/gpu_speed.md`,
and prints the table; what was not installed or not used is said in the table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("full", "frozen_vision", "lora", "qlora")
# memory budgets of the best settings (GiB), from the goals on one 141 GB H200; capped by the card
GPU_BUDGETS = {"full": 120, "frozen_vision": 120, "lora": 40, "qlora": 16}
DATASET = "docvqa_pages"
# What `--no-build-isolation` builds need here: setuptools for this package; torch (installed with the
# package) and these for DeepSpeed's source distribution (py-cpuinfo: its op checks) and flash-attn's setup.
BUILD_TOOLS = ("setuptools>=68", "wheel", "packaging", "psutil", "ninja", "py-cpuinfo")
# flash-attn's setup downloads a prebuilt wheel (~250 MB) when one matches torch/CUDA/Python; without one
# it compiles CUDA kernels for hours, so that build is stopped, and any install at this limit.
KERNEL_INSTALL_S = {"flash-attn": 300, "liger-kernel": 120}
# the reasons an optional package did not install, and the start, handed to the re-started interpreter
NOT_INSTALLED_VARIABLE = "PHI3V_GPU_SPEED_NOT_INSTALLED"
STARTED_VARIABLE = "PHI3V_GPU_SPEED_STARTED"
# On a GPU the whole call, install included, ends within this; a row needs at least MIN_ROW_S (start,
# load, probe, steps), so one that cannot have it is left out and said so, one still running is stopped.
TIME_LIMIT_S = 480
MIN_ROW_S = 45


# ---- installation ------------------------------------------------------------------------------

def pip_install(*args: str, timeout_s: float | None = None, stop_at: str | None = None) -> tuple[int | None, str]:
    """`pip install ARGS` in this interpreter's environment: (exit status, or None when stopped;
    the output's last lines). It is stopped at `timeout_s` or at an output line holding `stop_at`,
    with its whole process group (a source build's compilers too)."""
    # DeepSpeed's ops build on first use (none here), not at install; build scripts' prints unbuffered
    env = {**os.environ, "DS_BUILD_OPS": "0", "PYTHONUNBUFFERED": "1"}
    verbose = ["--verbose"] if stop_at else ["--quiet"]  # a build's own lines show only with --verbose
    process = subprocess.Popen([sys.executable, "-m", "pip", "install", *verbose, *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    stop = lambda: os.killpg(process.pid, signal.SIGKILL)  # noqa: E731
    timer = threading.Timer(timeout_s, stop) if timeout_s else None
    lines, stopped = [], False
    try:
        if timer:
            timer.start()
        for line in process.stdout:
            lines = [*lines[-40:], line.rstrip()]
            if stop_at and stop_at in line:
                stopped = True
                stop()
                break
        process.wait()
    finally:
        if timer:
            timer.cancel()
    return (None if stopped or process.returncode == -signal.SIGKILL else process.returncode), "\n".join(lines)


def install(kernels: bool = True) -> dict:
    """This package with QLoRA and DeepSpeed (or exit), then the optional kernels; returns
    {package: why it is not installed}."""
    # torch before the extras: DeepSpeed ships only a source distribution whose setup imports torch
    steps = (BUILD_TOOLS, ("--no-build-isolation", "-e", "."), ("--no-build-isolation", "-e", ".[qlora,deepspeed]"))
    for what in steps:
        status, output = pip_install(*what)
        if status != 0:
            sys.exit(f"pip install {' '.join(what)} failed:\n{output}")
    if not kernels:
        return {name: "not installed (--no-kernels)" for name in KERNEL_INSTALL_S}
    return install_kernels(KERNEL_INSTALL_S)


def install_kernels(limits: dict) -> dict:
    """Each optional package `pip install --no-build-isolation NAME` within its time limit; returns
    {package: why it is not installed}."""
    not_installed = {}
    for name, limit in limits.items():
        # flash-attn's setup prints this when no prebuilt wheel matches, then compiles for hours
        status, output = pip_install("--no-build-isolation", name, timeout_s=limit,
                                     stop_at="Building from source" if name == "flash-attn" else None)
        guessed = [line.split("URL:", 1)[1].strip() for line in output.splitlines() if "Guessing wheel URL" in line]
        if status is None and "Building from source" in output:
            wheel = guessed[-1] if guessed else "none"
            not_installed[name] = (f"no prebuilt wheel for this torch/CUDA/Python ({wheel}); "
                                   "its source build takes hours, so it was stopped")
        elif status is None:
            not_installed[name] = f"did not install within {limit} s"
        elif status:
            last = (output.strip().splitlines() or ["no output"])[-1]
            not_installed[name] = f"pip install failed ({last[:200]})"
    return not_installed


def restart_installed(argv: list[str], not_installed: dict, started: float) -> None:
    """Run this script again in a fresh interpreter (never returns): an editable install is importable
    only from interpreters started after it."""
    env = {**os.environ, NOT_INSTALLED_VARIABLE: json.dumps(not_installed), STARTED_VARIABLE: repr(started)}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv, "--no-install"], env)


def versions() -> dict:
    from phi3v.provenance import package_versions

    return package_versions(("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes",
                             "flash-attn", "liger-kernel", "triton"))


# ---- inputs ------------------------------------------------------------------------------------

def write_base(folder: Path, *, tiny: bool, device: str):
    """Config (release or tiny), a small tokenizer with Phi's special tokens, processor, random weights."""
    import torch

    from phi3v.configuration_phi3v import RELEASE_CONFIG_FILE, Phi3VConfig
    from phi3v.modeling_phi3v import Phi3VForCausalLM
    from phi3v.image_processing_phi3v import Phi3VImageProcessor
    from phi3v.processing_phi3v import IMAGE_TOKEN, Phi3VProcessor
    from phi3v.training.demo_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(["What is written in the total field of this form?", "42.00"] * 50, 512)
    special = dict(image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                   pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    if tiny:
        config = Phi3VConfig.tiny(vocab_size=len(tokenizer), **special)
    else:  # the release's shapes; the embedding keeps its 32064 rows, the tokenizer uses the first few
        config = Phi3VConfig.from_pretrained(RELEASE_CONFIG_FILE, **special)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Phi3VForCausalLM.random_init(config, device=device, dtype=dtype)
    model.save_pretrained(folder)
    del model
    if device == "cuda":  # the rows' processes need the card; this one keeps no model on it
        torch.cuda.empty_cache()
    Phi3VProcessor(Phi3VImageProcessor(num_crops=1, crop_size=config.crop_size), tokenizer).save_pretrained(folder)
    return config


def write_pages(folder: Path, *, samples: int, side: int) -> None:
    """`docvqa_pages_train.jsonl` + square noise pages: at num_crops 16 and 336 px, 4x4 crops + global."""
    import numpy as np
    from PIL import Image

    from phi3v.data.sources.common import write_jsonl

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(samples):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.png")
        records.append({"id": f"train-{i:010d}", "source": DATASET, "conversations": [
            {"images": [f"{i}.png"], "user": "What is written in the total field of this form?",
             "assistant": "42.00"}]})
    write_jsonl(folder / f"{DATASET}_train.jsonl", records)


# ---- rows --------------------------------------------------------------------------------------

def kernels_available(device: str, not_installed: dict) -> dict:
    """Which optional kernels this machine can use, and why not where it cannot."""
    import torch

    from phi3v.training.optimizations import fused_kernels_unavailable
    from phi3v.training.model_setup import FLASH_MIN_CAPABILITY

    flash = None
    if device != "cuda":
        flash = "flash-attn needs a CUDA GPU"
    elif importlib.util.find_spec("flash_attn") is None:
        flash = f"flash-attn is not installed ({not_installed.get('flash-attn', 'not asked for: --no-install')})"
    elif torch.cuda.get_device_capability(0) < FLASH_MIN_CAPABILITY:
        flash = "flash-attn needs compute capability 8.0 or newer; this card has {}.{}".format(
            *torch.cuda.get_device_capability(0))
    fused = fused_kernels_unavailable(torch.device(device))
    compiled = None if device == "cuda" else "inductor's CPU code generation takes minutes on tiny shapes"
    return {"flash_attention_2": flash, "fused_kernels": fused, "compile_layers": compiled}


def speed_rows(*, tiny: bool, device: str, effective_batch: int, card_gib: float | None,
               unavailable: dict) -> list[dict]:
    """The recipe's row and the best-settings row of every strategy, the recipe's rows first (under the
    time limit they are measured first). Best rows pack their micro-batches only
    under flash attention (its varlen kernel); SDPA would attend through a dense block-diagonal mask,
    several times the work of padding."""
    from phi3v.training.run_config import Strategy

    attention = "sdpa" if unavailable["flash_attention_2"] else "flash_attention_2"
    recipe, best = [], []
    for strategy in STRATEGIES:
        # full-parameter rows under DeepSpeed ZeRO-2, as the recipe's (the paper preset's train.deepspeed)
        deepspeed = Strategy(strategy).uses_deepspeed and importlib.util.find_spec("deepspeed") is not None
        base = {"strategy": strategy, "precision": "bf16", "attention": attention, "nodes": 1, "gpus": 1,
                "effective_batch": effective_batch, "deepspeed": deepspeed}
        recipe.append({**base, "row": f"{strategy}-recipe", "settings": "recipe",
                       "per_device_batch_size": 1, "gradient_checkpointing": True})
        budget = 64 if tiny else min(GPU_BUDGETS[strategy], 0.9 * (card_gib or GPU_BUDGETS[strategy]))
        best.append({**base, "row": f"{strategy}-best", "settings": "best", "gradient_checkpointing": True,
                     "memory_budget_gib": budget, "packing": attention == "flash_attention_2",
                     "compile_layers": unavailable["compile_layers"] is None,
                     "fused_kernels": unavailable["fused_kernels"] is None,
                     "frozen_vision_no_grad": strategy == "frozen_vision"})
    return recipe + best


class OutOfTime(Exception):
    """A row not measured because the time limit came first."""


def measure(row: dict, *, base: Path, data: Path, out: Path, num_crops: int, steps: int, warmup: int,
            extra: dict, timeout_s: float | None = None) -> dict:
    """One row through the workflow's speed benchmark, started as the workflow's launcher starts one
    process (a fresh CUDA context, DeepSpeed and compile state per row, as a workflow job has);
    stopped after `timeout_s`."""
    from phi3v.launch import launch_command
    from phi3v.training.run_config import speed_run

    result_json = out / f"{row['row']}.json"
    # the workflow's speed defaults: learning rate 1e-5, LoRA rank 64 (schemas/config.schema.yaml `speed`)
    speed = {"dataset": DATASET, "num_crops": num_crops, "steps": steps, "warmup": warmup,
             "learning_rate": 1e-5, "lora_rank": 64}
    run = speed_run(row, speed)
    command = launch_command(["phi3v.training.speed", "--row", row["row"], "--run-json", run.to_json(),
                              "--base-model", str(base), "--data-dir", str(data),
                              "--weights", "pretrained", "--warmup", str(warmup), "--out", str(result_json)],
                             processes_per_node=1)
    start = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise OutOfTime(f"stopped at the time limit after {timeout_s:.0f} s") from None
    if completed.returncode:
        lines = (completed.stderr or completed.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {completed.returncode}")
    result = json.loads(result_json.read_text())
    # the plan models the recipe's settings; a best row's fitted batch and partial recomputation it does not
    plan = {"planned_peak_gib": planned_peak_gib(run, base, num_crops)} if row["settings"] == "recipe" else {}
    return {**result, "row": row["row"], "settings_kind": row["settings"], "card": result["device"],
            "row_wall_s": round(time.perf_counter() - start, 1), **plan, **extra}


def planned_peak_gib(run, base: Path, num_crops: int) -> float:
    """The per-GPU peak `phi3v plan` gives this row (phi3v.training.memory_plan, from the model's config.json),
    to set beside the measured one."""
    from phi3v.model_sizes import ModelSizes
    from phi3v.training.memory_plan import GIB, SampleShape, estimate

    sizes = ModelSizes.from_config(json.loads((base / "config.json").read_text()))
    return round(estimate(sizes, run, SampleShape.of(sizes, num_crops, images=1), world_size=1).peak / GIB, 2)


def markdown(results: list[dict], notes: list[str]) -> str:
    from phi3v.reporting.speed_table import BEST_SETTINGS_TITLE, settings_speed_lines

    lines = []
    for kind, title in (("recipe", "The recipe's settings"), ("best", BEST_SETTINGS_TITLE)):
        rows = [(r["row"], r) for r in results if r["settings_kind"] == kind]
        lines += [f"## {title}", "", *settings_speed_lines(rows), ""]
    card = results[0]["card"] if results else "no row measured"
    return "\n".join([f"# GPU speed at the DocVQA shape ({card})", "", *lines, *notes, ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on a CPU (the same code path)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gpu_speed")
    parser.add_argument("--no-install", action="store_true", help="use the environment as it is")
    parser.add_argument("--install-only", action="store_true",
                        help="install, then show that a fresh interpreter imports the package; measure nothing")
    parser.add_argument("--no-kernels", action="store_true", help="install without flash-attn and liger-kernel")
    parser.add_argument("--steps", type=int, help="measured optimiser steps a row (2; --tiny: 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps (compile, allocate)")
    parser.add_argument("--effective-batch", type=int, help="samples an optimiser step (8; --tiny: 2)")
    parser.add_argument("--rows", nargs="*", help="only these rows, e.g. lora-recipe lora-best")
    parser.add_argument("--time-limit-s", type=float,
                        help=f"end the whole call within this, install included ({TIME_LIMIT_S} on a GPU; "
                             "--tiny: none); rows that do not fit are left out and listed")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.steps = args.steps or (1 if args.tiny else 2)
    args.effective_batch = args.effective_batch or (2 if args.tiny else 8)

    called = float(os.environ.get(STARTED_VARIABLE) or time.time())  # wall clock: it spans the restart
    if not args.no_install and (args.install_only or not args.tiny):  # --tiny: the CPU check installs nothing
        not_installed = install(kernels=not args.no_kernels)
        print(f"installed in {time.time() - called:.0f} s", flush=True)
        restart_installed(argv, not_installed, called)
    not_installed = json.loads(os.environ.get(NOT_INSTALLED_VARIABLE, "{}"))
    time_limit_s = args.time_limit_s if args.time_limit_s is not None else (None if args.tiny else TIME_LIMIT_S)
    deadline = called + time_limit_s if time_limit_s else None
    if args.install_only:
        import phi3v

        print(f"phi3v imports from {Path(phi3v.__file__).parent}; not installed: "
              + ("; ".join(f"{k}: {v}" for k, v in not_installed.items()) or "nothing"))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile

    import torch

    from phi3v.files import write_text_atomic

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.tiny and device != "cuda":
        sys.exit("no CUDA GPU here: the full-size benchmark needs one (use --tiny for the CPU check)")
    num_crops = 4 if args.tiny else 16
    started, started_wall = time.perf_counter(), time.time()
    with tempfile.TemporaryDirectory(prefix="gpu-speed-") as work:
        work = Path(work)
        write_base(work / "model", tiny=args.tiny, device=device)
        # the budgets' ceiling: what the card has free for a row (this process keeps its CUDA context)
        card_gib = torch.cuda.mem_get_info(0)[0] / 2**30 if device == "cuda" else None
        # tiny crops are 56 px: a 112 px page is 2x2 crops + global, as 1344 px is 4x4 at 336 px
        write_pages(work / "data", samples=args.effective_batch, side=112 if args.tiny else 1344)
        unavailable = kernels_available(device, not_installed)
        rows = speed_rows(tiny=args.tiny, device=device, effective_batch=args.effective_batch,
                          card_gib=card_gib, unavailable=unavailable)
        rows = [row for row in rows if not args.rows or row["row"] in args.rows]
        extra = {"versions": versions(), "not_used": {**unavailable, **not_installed}}
        inputs_s = time.perf_counter() - started
        args.out.mkdir(parents=True, exist_ok=True)

        def measured(row: dict) -> dict:
            left = deadline - time.time() if deadline else None
            try:
                if left is not None and left < MIN_ROW_S:
                    raise OutOfTime(f"not started: {left:.0f} s of the {time_limit_s:.0f} s time limit left")
                result = measure(row, base=work / "model", data=work / "data", out=work, num_crops=num_crops,
                                 steps=args.steps, warmup=args.warmup, extra=extra, timeout_s=left)
            except OutOfTime as reason:
                print(f"{row['row']}: {reason}", flush=True)
                return {"row": row["row"], "settings_kind": row["settings"], "not_measured": str(reason),
                        "settings": row, **extra}
            except Exception as error:  # one failing row (a kernel, out of memory) must not lose the others
                print(f"{row['row']}: FAILED {error!r}", flush=True)
                return {"row": row["row"], "settings_kind": row["settings"], "error": repr(error)[:500],
                        "settings": row, **extra}
            print(f"{row['row']}: {result['img_per_s']:.3f} img/s, {result['peak_mem_gib']:.2f} GiB", flush=True)
            return result

        # One GPU measures one row at a time; on a CPU (one thread a row) a row a core.
        at_once = 1 if device == "cuda" else max(1, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
            results = list(pool.map(measured, rows))
    wall = time.perf_counter() - started
    unused = {key: reason for key, reason in extra["not_used"].items() if reason}
    failed = [f"{r['row']}: {r['error']}" for r in results if "error" in r]
    out_of_time = [f"{r['row']} ({r['not_measured']})" for r in results if "not_measured" in r]
    planned = [f"{r['row']} {r['planned_peak_gib']:.2f} planned, {r['peak_mem_gib']:.2f} measured" for r in results
               if "planned_peak_gib" in r and "peak_mem_gib" in r]
    notes = [f"Shape: num_crops {num_crops}, effective batch {args.effective_batch}, {args.steps} measured "
             f"steps after {args.warmup} warm-up; random weights; {time.time() - called:.0f} s in all "
             f"(install and start {started_wall - called:.0f} s, model and pages {inputs_s:.0f} s, "
             f"rows {wall - inputs_s:.0f} s)"
             + (f", {at_once} rows at a time (a CPU check: the rows share the cores)." if at_once > 1 else "."),
             "Not used here: " + ("; ".join(f"{k}: {v}" for k, v in unused.items()) or "nothing") + ".",
             *([f"Memory plan (`phi3v plan`'s arithmetic) vs measured peak, GiB a GPU: {'; '.join(planned)}."]
               if planned else []),
             *([f"Failed rows: {'; '.join(failed)}."] if failed else []),
             *([f"Not measured within the time limit: {'; '.join(out_of_time)}."] if out_of_time else [])]
    table = markdown([r for r in results if "error" not in r and "not_measured" not in r], notes)
    write_text_atomic(args.out / "gpu_speed.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in results))
    write_text_atomic(args.out / "gpu_speed.md", table)
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
