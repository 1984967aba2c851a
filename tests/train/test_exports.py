"""What a training job leaves on disk: exports interrupted by a kill are cleaned up by the next
write, exported folders get the user's normal permissions, a failed job leaves no stale
adapter/ and prints its own error on Snakemake's console, and two identical runs write the same bytes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phi3v.files import atomic_output_dir

from workflow.helpers import run_snakemake

# A writer that is killed halfway through an export (as a kill during the final save would).
KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from phi3v.files import atomic_output_dir
    with atomic_output_dir(sys.argv[1]) as folder:
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
        print(folder, flush=True)
        time.sleep(60)
""")


def start_writer(final_dir: Path) -> tuple[subprocess.Popen, Path]:
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(final_dir)], stdout=subprocess.PIPE, text=True)
    return writer, Path(writer.stdout.readline().strip())


def test_a_killed_export_leaves_debris_that_the_next_export_removes(tmp_path):
    final = tmp_path / "run" / "model"
    alive, alive_tmp = start_writer(final)  # a writer still at work (another test beside this one)
    try:
        killed, killed_tmp = start_writer(final)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_tmp.is_dir() and killed_tmp.name.startswith(".model.tmp-") and alive_tmp.is_dir()
        other_output = tmp_path / "run" / ".adapter.tmp-1-x"  # another output's folder: not ours to touch
        other_output.mkdir()
        with atomic_output_dir(final) as folder:
            (folder / "config.json").write_text("{}")
        assert not killed_tmp.exists()
        assert alive_tmp.is_dir() and other_output.is_dir()
        assert sorted(p.name for p in final.iterdir()) == ["config.json"]
    finally:
        alive.kill()
        alive.wait()


def test_exported_folders_follow_the_umask(tmp_path):
    for umask, mode in [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)]:
        previous = os.umask(umask)
        try:
            with atomic_output_dir(tmp_path / f"model-{umask:o}") as folder:
                (folder / "weights").write_text("w")
        finally:
            os.umask(previous)
        assert (tmp_path / f"model-{umask:o}").stat().st_mode & 0o777 == mode


def test_failed_training_job_prints_its_error_and_leaves_no_adapter(tmp_path, tiny_base):
    """The train rule on an empty dataset folder: the job fails in the training process."""
    results = tmp_path / "results"
    shutil.copytree(tiny_base, results / "base_model")
    (results / "data" / "docvqa").mkdir(parents=True)
    run_dir = results / "runs" / "docvqa" / "lora-bf16-sdpa"
    (run_dir / "adapter").mkdir(parents=True)  # left by an earlier run
    (run_dir / "adapter" / "adapter_model.safetensors").write_text("stale")

    failed = run_snakemake(str(run_dir / "metrics.json"), "--cores", "1", "--allowed-rules", "train",
                           "--config", f"results_dir={results}")
    assert failed.returncode != 0
    console = failed.stderr
    assert f"error: {results / 'data' / 'docvqa' / 'docvqa_train.jsonl'} does not exist" in console, console[-3000:]
    assert "phi3v.training.train failed with exit status 2" in console
    assert not (run_dir / "adapter").exists() and not (run_dir / "model").exists()


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_two_identical_lora_runs_write_byte_identical_folders(tiny_base, tiny_data, tmp_path):
    # Python's string hash seed varies per process and orders sets: peft keeps target_modules as one
    from phi3v.training.model_setup import lora_targets

    from .conftest import base_run
    from .test_resume import cli

    run = base_run(strategy="lora", lora_rank=4, lora_alpha=8, max_steps=1)
    seeds = ["1", "2"]
    set_orders = [subprocess.run([sys.executable, "-c", f"print(list(set({lora_targets(run)!r})))"], text=True,
                                 capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
                  for seed in seeds]
    assert set_orders[0] != set_orders[1]  # these seeds do order the targets differently
    runs = [subprocess.Popen(cli(run, tiny_base, tiny_data, tmp_path / seed, tmp_path / f"ckpt{seed}"),
                             env={**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in seeds]
    for process in runs:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]
    for folder in ("adapter", "model"):
        first, second = (folder_bytes(tmp_path / seed / folder) for seed in seeds)
        assert "adapter_config.json" in first or folder == "model"
        assert first == second, [name for name in first if first[name] != second.get(name)]
