"""The workflow lints clean, lists both presets' DAGs offline, and refuses bad configs before any job."""

import os

import pytest

from phi3v.reporting import recipe_tables
from phi3v.workflow import settings
from .helpers import job_counts, run_snakemake as snakemake

# One UCF-101 run besides the rows of the recipe's accuracy tables.
TABLE_ROWS = sum(1 for table in recipe_tables.ACCURACY_TABLES for row in table.rows if row.strategy) + 1


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


# Dry runs plan into an empty results folder, so results of an earlier run do not hide jobs.
def test_demo_dag(tmp_path):
    result = snakemake("-n", "--cores", "2", "--config", f"results_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == TABLE_ROWS  # every row runs on the CPU, QLoRA included (NF4 on CPU)
    assert counts["evaluate"] == counts["train"] + 4  # plus the base model on each dataset
    assert counts["synthesize_raw"] == 4 and counts["build_demo_model"] == 1
    assert counts["benchmark_speed"] == 4  # the A100 table's 1-node rows without flash attention
    assert "download_model" not in counts
    # The longest run (UCF-101, 30 epochs: the critical path) trains and is evaluated first.
    priorities = job_priorities(result.stdout)
    assert priorities[("train", "ucf101")] == {30} and priorities[("evaluate", "ucf101")] == {30, 0}  # base: 0
    assert priorities[("train", "docvqa")] == {20} and priorities[("evaluate", "docvqa")] == {20, 0}


def job_priorities(output: str) -> dict[tuple[str, str], set[int]]:
    """{(rule, dataset): the priorities of its jobs} from a dry run's job listing (0 when not shown)."""
    priorities: dict[tuple[str, str], set[int]] = {}
    for block in output.split("rule ")[1:]:
        rule = block.split(":", 1)[0]
        dataset = next((field.split("=", 1)[1] for line in block.splitlines() if line.strip().startswith("wildcards:")
                        for field in line.split(":", 1)[1].replace(" ", "").split(",") if field.startswith("dataset=")),
                       None)
        priority = next((int(line.split(":", 1)[1]) for line in block.splitlines()
                         if line.strip().startswith("priority:")), 0)
        if dataset is not None:
            priorities.setdefault((rule, dataset), set()).add(priority)
    return priorities


def test_paper_dag_lists_every_table_row_without_network(tmp_path):
    # `--resources gpu=8`: the machine's 8 GPUs, stated (the paper preset needs them; see the refusal below)
    result = snakemake("-n", "--cores", "2", "--resources", "gpu=8", "--config", "preset=paper", f"results_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == TABLE_ROWS == 19
    assert counts["download_model"] == 1 and counts["download_raw"] == 4
    assert counts["benchmark_speed"] == 11  # 8 A100 + 3 V100 rows; the multi-node rows need nodes: 2 and 4


def fake_nvidia_smi(folder, monkeypatch, cards_mib: list[int]) -> None:
    """An `nvidia-smi` on PATH that lists these cards (none: a machine without GPUs)."""
    folder.mkdir()
    listing = "".join(f"echo {mib}\n" for mib in cards_mib)
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{listing}")
    (folder / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_a_gpu_preset_on_a_machine_without_its_gpus_is_refused_before_any_job(tmp_path, monkeypatch):
    """Before, the paper dry run passed on a CPU machine; the first training job then failed after the downloads."""
    fake_nvidia_smi(tmp_path / "bin", monkeypatch, [])
    result = snakemake("-n", "--cores", "2", "--config", "preset=paper", f"results_dir={tmp_path}")
    assert result.returncode != 0 and "Job stats" not in result.stdout
    said = result.stdout + result.stderr
    assert ("config key `hardware.gpus_per_node` asks for 8 GPUs but nvidia-smi finds no CUDA GPU on this machine"
            in said), said[-3000:]
    assert "--workflow-profile profiles/slurm" in said and "tests/workflow/paper_rehearsal.yaml" in said


def test_a_run_that_cannot_fit_the_cards_is_refused_with_its_fix(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", monkeypatch, [81920])  # one 80 GiB card
    result = snakemake("-n", "--cores", "2", "--config", "preset=paper", "hardware={gpus_per_node: 1}",
                       "runs_filter=[docvqa/full-bf16-*, docvqa/lora-bf16-*]", f"results_dir={tmp_path}")
    assert result.returncode != 0 and "Job stats" not in result.stdout
    said = result.stdout + result.stderr
    assert "1 run(s) cannot fit on 80 GiB GPUs" in said, said[-3000:]
    assert ("docvqa/full-bf16-flash_attention_2: 94.3 GiB a GPU at per-device batch 1 on 1 x 80 GiB — does not "
            "fit: 2 GPUs, over which ZeRO-2 partitions the optimiser state (`hardware={gpus_per_node: 2}`)") in said
    fits = snakemake("-n", "--cores", "2", "--config", "preset=paper", "hardware={gpus_per_node: 1}",
                     "runs_filter=[docvqa/lora-bf16-*]", f"results_dir={tmp_path}")
    assert fits.returncode == 0, fits.stderr[-3000:]


DOCVQA_EVALUATIONS = 1 + sum(1 for run in settings.load_preset("paper")["runs"] if run["dataset"] == "docvqa")


def test_lmms_eval_protocol_adds_a_validation_split_and_one_job_per_docvqa_evaluation(tmp_path):
    paper = snakemake("-n", "--cores", "2", "--resources", "gpu=8", "--config", "preset=paper",
                      "evaluation={lmms_eval: true}", f"results_dir={tmp_path}")
    assert paper.returncode == 0, paper.stderr
    counts = job_counts(paper.stdout)
    assert counts["evaluate_lmms_eval"] == DOCVQA_EVALUATIONS == 9  # the base model and the 8 DocVQA rows
    assert counts["download_raw"] == 5 and counts["convert"] == 6  # plus lmms-lab-encoder/DocVQA's validation
    assert f"{tmp_path}/raw/docvqa_val" in paper.stdout
    assert f"{tmp_path}/eval/docvqa/base/lmms_eval/scores.json" in paper.stdout

    demo = snakemake("-n", "--cores", "2", "--config", "evaluation={lmms_eval: true}", f"results_dir={tmp_path}")
    assert demo.returncode == 0, demo.stderr
    counts = job_counts(demo.stdout)
    assert counts["evaluate_lmms_eval"] == 9 and counts["synthesize_raw"] == 5  # the synthetic stand-in
    assert counts["evaluate"] == TABLE_ROWS + 4  # the recipe's evaluations are unchanged


@pytest.mark.parametrize(
    "override, expected",
    [
        ("preset=nope", "config key `preset`: unknown preset 'nope'; allowed values: demo, paper"),
        ("hardware={accelerator: tpu}", "config key `hardware.accelerator`: 'tpu' is not allowed; allowed values: cpu, cuda"),
    ],
)
def test_bad_config_fails_before_any_job(override, expected):
    result = snakemake("-n", "--cores", "1", "--config", override)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr, result.stdout + result.stderr
    assert "Job stats" not in result.stdout


def test_runs_filter_selects_one_dataset(tmp_path):
    result = snakemake(
        "-n", "--cores", "1", "--config", "runs_filter=[docvqa/full-bf16-*, docvqa/lora-bf16-*]", f"results_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 2 and counts["evaluate"] == 3
    assert counts["convert"] == 4  # the base model's tokenizer reads every defined dataset
    assert "benchmark_speed" not in counts


def test_figures_job_writes_its_folder_when_every_selected_speed_row_is_skipped(tmp_path):
    # the demo skips its flash-attention rows (no GPU): this selection runs nothing but the report jobs,
    # whose figures folder was then never written (MissingOutputException)
    result = snakemake("--cores", "1", "--config", "runs_filter=[speed/*flash*]", f"results_dir={tmp_path}",
                       "--", str(tmp_path / "figures"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped speed row full-flash_attention_2-bf16-2x16: needs GPU; needs 2 nodes" in result.stderr
    assert [path.name for path in (tmp_path / "figures").glob("*.png")] == ["not_run.png"]


def test_paper_preset_has_the_recipe_hyperparameters():
    config = settings.resolve_config({"preset": "paper"})
    for table in recipe_tables.ACCURACY_TABLES:
        runs = [run for run in config["runs"] if run["dataset"] == table.dataset]
        rows = [row for row in table.rows if row.strategy]
        assert len(runs) == len(rows)
        for run, row in zip(runs, rows):
            assert (run["strategy"], run["precision"], run["learning_rate"], run["epochs"], run["batch_size"]) == (
                row.strategy, row.precision, row.learning_rate, row.epochs, row.batch_size
            )
            assert (run["lora_rank"], run["lora_alpha"]) == (row.lora_rank, row.lora_alpha)
            assert run["attention"] == ("flash_attention_2" if row.precision == "bf16" else "eager")
            assert run["deepspeed"] == (row.strategy in ("full", "frozen_vision"))
    speed = [(r["strategy"], r["nodes"], r["gpus"], r["attention"] == "flash_attention_2", r["effective_batch"],
              r["precision"]) for r in config["speed"]["rows"]]
    assert speed == [(r.strategy, r.nodes, r.gpus, r.flash_attention, r.effective_batch, table.precision)
                     for table in (recipe_tables.SPEED_A100, recipe_tables.SPEED_V100) for r in table.rows]
