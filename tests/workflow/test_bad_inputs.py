"""Bad inputs the configuration alone shows are refused by a dry run, naming the key (or file:line:column)."""

import pytest

from .helpers import REPO, run_snakemake as snakemake


def dry_run(*config, cwd=REPO, snakefile=()):
    result = snakemake(*snakefile, "-n", "--cores", "1", "--config", *config, cwd=cwd)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("override, expected", [
    ("run_overrides={num_crops: 17}", "config key `run_overrides.num_crops`: 17 is greater than the maximum of 16"),
    ("datasets={docvqa: {num_crops: 0}}", "config key `datasets.docvqa.num_crops`: 0 is less than the minimum of 1"),
])
def test_num_crops_outside_1_to_16_fails_the_dry_run(override, expected):
    code, output = dry_run(override)
    assert code != 0 and expected in output, output
    assert "Job stats" not in output


@pytest.mark.parametrize("path, expected", [
    ("/nonexistent/mine", "config key `datasets.mine.path`: '/nonexistent/mine' does not exist"),
    ("config.yaml", "config key `datasets.mine.path`: 'config.yaml' is a file, not a folder"),
])
def test_custom_dataset_path_must_be_a_folder(path, expected):
    code, output = dry_run(f"datasets={{mine: {{source: custom, path: {path}, metric: accuracy, num_crops: 4}}}}")
    assert code != 0 and expected in output, output
    assert "Job stats" not in output


def test_yaml_syntax_error_in_config_yaml_gives_line_and_column(tmp_path):
    (tmp_path / "config.yaml").write_text("preset: demo\nruns_filter: [docvqa/full-*\non_unsupported: skip\n")
    code, output = dry_run("results_dir=results", cwd=tmp_path, snakefile=("--snakefile", str(REPO / "Snakefile")))
    assert code != 0
    assert ("config.yaml:3:15: not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence "
            "that starts at line 2, column 14)") in output, output


def test_a_skipped_run_is_listed_with_its_reason(tmp_path):
    runs = ("runs=[{dataset: docvqa, strategy: full, precision: bf16, attention: sdpa, learning_rate: 5.0e-4, epochs: 1}, "
            "{dataset: docvqa, strategy: full, precision: bf16, attention: flash_attention_2, learning_rate: 5.0e-4, epochs: 1}]")
    code, output = dry_run(f"results_dir={tmp_path}", runs, "runs_filter=[docvqa/*]", "on_unsupported=skip")
    assert code == 0, output
    assert "skipped run docvqa/full-bf16-flash_attention_2: needs GPU (on_unsupported: skip)" in output
    assert "skipped run docvqa/full-bf16-sdpa" not in output


def test_gpus_per_node_on_the_cpu_accelerator_fails_the_dry_run():
    code, output = dry_run("hardware={gpus_per_node: 8}")
    assert code != 0, output
    assert ("config key `hardware.gpus_per_node` is 8 but `hardware.accelerator` is cpu, which runs one process a "
            "node and uses no GPU — to train on GPUs set `--config 'hardware={accelerator: cuda, gpus_per_node: 8}'`; "
            "on CPUs set `gpus_per_node: 1` (or leave it out)") in output, output
    assert "Job stats" not in output
