# Config resolution and the small input functions every rules file uses.
import json
import os
import sys

from snakemake.exceptions import WorkflowError

from phi3v import launch
from phi3v.workflow import preflight, resources
from phi3v.workflow import config as settings
from phi3v.errors import UserError


def default_resource(name):
    """The raw value of a `--default-resources` entry (the profile's or the command line's), or None."""
    defaults = workflow.resource_settings.default_resources
    resource = defaults.get(name) if defaults is not None else None
    return None if resource is None else str(resource.raw).strip("'\" ")


def runs_on_slurm():
    """Jobs go to SLURM: the slurm executor (or its job step, inside a SLURM job), or the SLURM
    profile's default resources. The executor is only known once jobs are scheduled, the profile's
    resources already while the rules are read."""
    plugin = workflow.executor_plugin
    return (plugin is not None and plugin.name.startswith("slurm")) or default_resource("slurm_partition") is not None


def machine_gpus():
    """The machine's GPUs as `--resources gpu=N` gives them, else None (detected by the job)."""
    given = workflow.global_resources.get("gpu")
    return getattr(given, "value", given)


try:
    config.update(settings.resolve_config(config, workflow.basedir))
    preflight.check_custom_dataset_paths(config)
    resources.check_cluster(
        config, slurm=runs_on_slurm(), partition=default_resource("slurm_partition"), machine_gpus=machine_gpus()
    )
except UserError as error:
    # Reported before any job runs, without a traceback: the message names the key and the fix.
    raise WorkflowError(str(error)) from None

if workflow.is_main_process:
    for line in preflight.skipped_lines(config):
        print(line, file=sys.stderr)

if machine_gpus() is not None:
    # Local jobs inherit this process's environment: their GPU claims share `--resources gpu=N`.
    os.environ[launch.MACHINE_GPUS_VARIABLE] = str(machine_gpus())

wildcard_constraints:
    dataset=settings.wildcard_pattern(config["datasets"]),
    run=settings.wildcard_pattern([settings.BASE_RUN] + [run["run"] for run in config["runs"]]),
    row=settings.wildcard_pattern(row["row"] for row in config["speed"]["rows"]),

def results(path):
    """A path under the configured results folder."""
    return os.path.join(config["results_dir"], path)

def resources_of(kind):
    """Threads, memory (MB) and time limit (minutes) of a kind of job, from the config."""
    return config["resources"][kind]

def job_resources(kind, gpus_per_node=0, nodes=1):
    """The Snakemake resources of a kind of job, for this executor (see phi3v.workflow.resources.job_resources)."""
    return resources.job_resources(config, kind, slurm=runs_on_slurm(), gpus_per_node=gpus_per_node, nodes=nodes)

def speed_row_job_resources():
    """Resources of a speed-table job: one function of the row per resource."""
    def value(key):
        return lambda wildcards: job_resources("benchmark", *speed_row_resources(wildcards.row))[key]
    return {key: value(key) for key in job_resources("benchmark")}

def gpus_per_job():
    """GPUs a single-process GPU job (evaluation) uses."""
    return 1 if config["hardware"]["accelerator"] == "cuda" else 0

def dataset_dir(wildcards):
    return results(f"data/{wildcards.dataset}")

def model_to_evaluate(wildcards):
    """The base model for `base`, else the run's fine-tuned (or merged LoRA) model."""
    if wildcards.run == settings.BASE_RUN:
        return results("base_model")
    return results(f"runs/{wildcards.dataset}/{wildcards.run}/model")

def run_json(wildcards):
    return json.dumps(settings.run_config(config, wildcards.dataset, wildcards.run), sort_keys=True)

def training_processes():
    """(nodes, processes per node, GPUs per node) of a training job."""
    hardware = config["hardware"]
    gpus = hardware["gpus_per_node"] if hardware["accelerator"] == "cuda" else 0
    return hardware["nodes"], settings.processes_per_node(config), gpus

def speed_row_resources(row):
    """GPUs per node and nodes of a speed-table row (its `gpus` count all nodes)."""
    entry = settings.speed_row(config, row)
    gpus = entry["gpus"] // entry["nodes"] if config["hardware"]["accelerator"] == "cuda" else 0
    return gpus, entry["nodes"]

def all_scores():
    return [results(f"eval/{dataset}/{run}/scores.json") for dataset, run in settings.evaluations(config)]

def all_train_metrics():
    return [results(f"runs/{run['dataset']}/{run['run']}/metrics.json") for run in settings.active_runs(config)]

def all_speed_results():
    return [results(f"speed/{row}.json") for row in settings.speed_rows(config)]

def all_data_stats():
    return [results(f"data/{dataset}") for dataset in settings.used_datasets(config)]
