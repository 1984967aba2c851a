# Config resolution and the small input functions every rules file uses.
import json
import os

from snakemake.exceptions import WorkflowError

from phi3v import settings
from phi3v.errors import UserError

try:
    config.update(settings.resolve_config(config, workflow.basedir))
except UserError as error:
    # Reported before any job runs, without a traceback: the message names the key and the fix.
    raise WorkflowError(str(error)) from None

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

def all_scores():
    return [results(f"eval/{dataset}/{run}/scores.json") for dataset, run in settings.evaluations(config)]

def all_train_metrics():
    return [results(f"runs/{run['dataset']}/{run['run']}/metrics.json") for run in settings.active_runs(config)]

def all_speed_results():
    return [results(f"speed/{row}.json") for row in settings.speed_rows(config)]

def all_data_stats():
    return [results(f"data/{dataset}") for dataset in settings.used_datasets(config)]
