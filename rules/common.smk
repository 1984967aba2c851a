# Config resolution and the small input functions every rules file uses.
import os
import sys

from snakemake.exceptions import WorkflowError

from phi3v import launch
from phi3v.layout import ResultsLayout, report_inputs
from phi3v.reporting.results import skipped_lines  # the runs `on_unsupported: skip` leaves out, a console line each
from phi3v.workflow import preflight, resources
from phi3v.workflow import plan as memory_plan
from phi3v.workflow import settings
from phi3v.errors import UserError


def raw_resource(resources, name):
    """The raw value of entry `name` of a Snakemake resource mapping (None when unset)."""
    resource = resources.get(name) if resources is not None else None
    return None if resource is None else str(getattr(resource, "raw", resource)).strip("'\" ")


def default_resource(name):
    """The raw value of a `--default-resources` entry (the profile's or the command line's), or None."""
    return raw_resource(workflow.resource_settings.default_resources, name)


def rule_partitions():
    """{rule: slurm_partition} of the rules that `set-resources` (profile or command line) gives one."""
    overwrites = workflow.resource_settings.overwrite_resources
    partitions = {rule: raw_resource(resources, "slurm_partition") for rule, resources in overwrites.items()}
    return {rule: partition for rule, partition in partitions.items() if partition is not None}


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


def local_cards():
    """GiB of each card nvidia-smi lists, for a local GPU run planned by this process; None otherwise."""
    if config["hardware"]["accelerator"] != "cuda" or runs_on_slurm() or not workflow.is_main_process:
        return None
    return resources.local_gpu_memory_gib()


try:
    config.update(settings.resolve_config(config, workflow.basedir))
    preflight.check_custom_dataset_paths(config)
    cards = local_cards()
    resources.check_cluster(
        config, slurm=runs_on_slurm(), partition=default_resource("slurm_partition"), machine_gpus=machine_gpus(),
        rule_partitions=rule_partitions(), local_gpus=None if cards is None else len(cards),
    )
    card_gib = memory_plan.card_memory_gib(config, cards or [])
    if card_gib is not None:
        memory_plan.check_memory(config, card_gib)
except UserError as error:
    # Reported before any job runs, without a traceback: the message names the key and the fix.
    raise WorkflowError(str(error)) from None

if workflow.is_main_process:
    for line in skipped_lines(config):
        print(line, file=sys.stderr)

if machine_gpus() is not None:
    # Local jobs inherit this process's environment: their GPU claims share `--resources gpu=N`.
    os.environ[launch.MACHINE_GPUS_VARIABLE] = str(machine_gpus())

wildcard_constraints:
    dataset=settings.wildcard_pattern(config["datasets"]),
    run=settings.wildcard_pattern([settings.BASE_RUN] + [run["run"] for run in config["runs"]]),
    row=settings.wildcard_pattern(row["row"] for row in config["speed"]["rows"]),
    model_key=settings.wildcard_pattern(settings.dataset_models(config)),

# Every path under the results folder (phi3v/layout.py).
layout = ResultsLayout(config["results_dir"])

def resources_of(kind):
    """Threads, memory (MB) and time limit (minutes) of a kind of job, from the config."""
    return config["resources"][kind]

def job_resources(kind, gpus_per_node=0, nodes=1):
    """The Snakemake resources of a kind of job, for this executor (see phi3v.workflow.resources.job_resources)."""
    return resources.job_resources(config, kind, slurm=runs_on_slurm(), gpus_per_node=gpus_per_node, nodes=nodes)

def training_job_resources():
    """Resources of a training job: the configured hardware's nodes and GPUs."""
    nodes, _, gpus = resources.training_processes(config)
    return job_resources("train", gpus_per_node=gpus, nodes=nodes)

def speed_row_job_resources():
    """Resources of a speed-table job: one function of the row per resource."""
    def value(key):
        def of_row(wildcards):
            nodes, _, gpus = resources.speed_row_processes(config, settings.speed_row(config, wildcards.row))
            return job_resources("benchmark", gpus_per_node=gpus, nodes=nodes)[key]
        return of_row
    return {key: value(key) for key in job_resources("benchmark")}

def gpus_per_job():
    """GPUs a single-process GPU job (evaluation) uses."""
    return 1 if config["hardware"]["accelerator"] == "cuda" else 0

def dataset_dir(wildcards):
    return layout.data(wildcards.dataset)

def base_model_of(wildcards):
    """The model a dataset's runs start from: the preset's, or the dataset's own `model`."""
    key = settings.dataset_model_key(config, wildcards.dataset)
    return layout.base_model if key is None else layout.dataset_base_model(key)

def model_to_evaluate(wildcards):
    """The base model for `base`, else the run's fine-tuned (or merged LoRA) model."""
    if wildcards.run == settings.BASE_RUN:
        return base_model_of(wildcards)
    return layout.model(wildcards.dataset, wildcards.run)

def run_priority(wildcards):
    """Scheduling priority of a run's training and evaluation: its epochs, so that the longest runs
    (the demo's UCF-101 row, its critical path) start first rather than last beside an idle core."""
    if wildcards.run == settings.BASE_RUN:
        return 0
    return settings.run_config(config, wildcards.dataset, wildcards.run).epochs

def run_json(wildcards):
    return settings.run_json(settings.run_spec(config, wildcards.dataset, wildcards.run))

def speed_run_json(wildcards):
    return settings.run_json(settings.speed_row(config, wildcards.row)["run_config"])

def launch_options(nodes, processes_per_node, gpus):
    """How a job starts its processes: the options of phi3v.launch.launcher_command."""
    return dict(nodes=nodes, processes_per_node=processes_per_node, gpus=gpus)

def training_launch(wildcards):
    return launch_options(*resources.training_processes(config))

def speed_row_launch(wildcards):
    return launch_options(*resources.speed_row_processes(config, settings.speed_row(config, wildcards.row)))

def result_files(wildcards):
    """The result files the tables and figures read, named by run and row (phi3v.layout.ReportInputs)."""
    trained = [(run["dataset"], run["run"]) for run in settings.active_runs(config)]
    return report_inputs(layout, settings.evaluations(config), trained, settings.speed_rows(config),
                         settings.lmms_eval_evaluations(config))

