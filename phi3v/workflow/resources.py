"""What a job asks the scheduler for (Snakemake resources per kind of job), and what the workflow
refuses before any job is submitted because the scheduler could never run it."""

from __future__ import annotations

from phi3v.errors import UserError

SLURM_PROFILE = "profiles/slurm/config.yaml"
# Jobs started through `python -m phi3v.launch`, which runs srun itself on several nodes.
LAUNCHED_KINDS = ("train", "benchmark")


def processes_per_node(config: dict) -> int:
    """Training processes on each node: one per GPU; one on a CPU."""
    hardware = config["hardware"]
    return hardware["gpus_per_node"] if hardware["accelerator"] == "cuda" else 1


def training_processes(config: dict) -> tuple[int, int, int]:
    """(nodes, processes per node, GPUs per node) of a training job."""
    hardware = config["hardware"]
    gpus = hardware["gpus_per_node"] if hardware["accelerator"] == "cuda" else 0
    return hardware["nodes"], processes_per_node(config), gpus


def speed_row_processes(config: dict, row: dict) -> tuple[int, int, int]:
    """(nodes, processes per node, GPUs per node) of a speed row: its `gpus` (all nodes together)
    split over its nodes, one process each; on a CPU one process per node."""
    if config["hardware"]["accelerator"] != "cuda":
        return row["nodes"], 1, 0
    per_node = row["gpus"] // row["nodes"]
    return row["nodes"], per_node, per_node


def job_resources(config: dict, kind: str, *, slurm: bool, gpus_per_node: int = 0, nodes: int = 1) -> dict:
    """Snakemake resources of one kind of job (`data`, `model`, `train`, `evaluate`, `benchmark`,
    `tables`): memory (MB per node) and time limit (minutes) from the config's `resources`, plus
    GPUs and nodes.

    On one machine the GPUs are the `gpu` resource, which Snakemake counts against
    `--resources gpu=N`. Under SLURM they are `gres: gpu:G` (G per node, as `--gres` means), and a
    job of LAUNCHED_KINDS starts its own processes: on several nodes its own `srun`, one task per
    node (`mpi: srun`), on one node `mpi: ""`. The job step plugin wraps a job in a one-task `srun`
    step unless it has an `mpi` key, and such a step would hold the CPUs the job's own `srun` needs.
    The keys depend only on the executor and the kind, so Snakemake can take each value from a
    function of the wildcards (a speed row's nodes).
    """
    limits = config["resources"][kind]
    resources = {"mem_mb": limits["mem_mb"], "runtime": limits["runtime"]}
    if not slurm:
        resources["gpu"] = gpus_per_node
        return resources
    resources["nodes"] = nodes
    resources["cpus_per_task"] = limits["threads"]
    resources["gres"] = f"gpu:{gpus_per_node}" if gpus_per_node else ""
    resources["tasks_per_gpu"] = 0  # no --ntasks-per-gpu: one launcher task per node
    if kind in LAUNCHED_KINDS:
        resources.update(mpi="srun" if nodes > 1 else "", tasks=nodes)
    else:
        resources["tasks"] = 1
    return resources


def check_cluster(config: dict, *, slurm: bool, partition: str | None, machine_gpus: int | None) -> None:
    """Refuse, before any job is submitted, what the scheduler could never run.

    `partition`: the profile's default `slurm_partition` (None when the profile sets none);
    `machine_gpus`: the N of `--resources gpu=N` (None when not given).
    """
    hardware = config["hardware"]
    if slurm:
        if partition is not None and not partition.strip():
            raise UserError(
                f"{SLURM_PROFILE}: `slurm_partition` is empty; set it to your cluster's partition "
                "(`sinfo -s` lists them) under default-resources in that file, or run with "
                "`--default-resources slurm_partition=NAME`"
            )
        return
    if hardware["nodes"] > 1:
        raise UserError(
            f"config key `hardware.nodes` is {hardware['nodes']}: runs on several nodes need SLURM; "
            "run with `--workflow-profile profiles/slurm`, or set `--config 'hardware={nodes: 1}'`"
        )
    if hardware["accelerator"] != "cuda" or machine_gpus is None:
        return
    wanted = [("config key `hardware.gpus_per_node`", hardware["gpus_per_node"])]
    wanted += [
        (f"speed row {row['row']}", row["gpus"])
        for row in config["speed"]["rows"] if row["skip_reason"] is None
    ]
    for what, gpus in wanted:
        if gpus > machine_gpus:
            raise UserError(
                f"{what} asks for {gpus} GPUs but `--resources gpu={machine_gpus}` says this machine "
                f"has {machine_gpus}; lower it (e.g. `--config 'hardware={{gpus_per_node: {machine_gpus}}}'`), "
                "remove the row with `runs_filter`, or run on a cluster (`--workflow-profile profiles/slurm`)"
            )
