"""What a job asks the scheduler for (Snakemake resources per kind of job), and what the workflow
refuses before any job is submitted because the scheduler could never run it."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

from phi3v.errors import UserError

SLURM_PROFILE = "profiles/slurm/config.yaml"
# Jobs started through `python -m phi3v.launch`, which runs srun itself on several nodes.
LAUNCHED_KINDS = ("train", "benchmark")
# A GPU count in a node's generic resources as sinfo prints them: `gpu:8`, `gpu:a100:4(S:0-1)`.
GPU_GRES = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


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


@dataclass(frozen=True)
class Partition:
    """What a SLURM partition can give one job: at most `max_nodes` nodes (None: no limit), and
    the nodes themselves with their GPU counts."""

    name: str
    max_nodes: int | None
    node_gpus: Mapping[str, int]

    def nodes_with(self, gpus_per_node: int) -> int:
        """How many nodes one job may get that have at least `gpus_per_node` GPUs each."""
        fitting = sum(gpus >= gpus_per_node for gpus in self.node_gpus.values())
        return fitting if self.max_nodes is None else min(fitting, self.max_nodes)


def query_slurm(*command: str) -> subprocess.CompletedProcess | None:
    """A SLURM client command's result; None when SLURM's tools are not on this machine."""
    if shutil.which(command[0]) is None:
        return None
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def read_partition(name: str | None, run: Callable[..., subprocess.CompletedProcess | None] = query_slurm) -> Partition | None:
    """The partition `name` (None: the cluster's default one) as `scontrol`/`sinfo` describe it;
    None when it cannot be asked (no SLURM tools here, or no controller answering), as then the
    executor plugin reports the problem itself."""
    shown = run("scontrol", "show", "partition", "--oneliner", *([name] if name else []))
    if shown is None:
        return None
    if shown.returncode != 0:
        if name and "not found" in (shown.stderr + shown.stdout).lower():
            raise UserError(
                f"SLURM partition {name!r} (`slurm_partition` in {SLURM_PROFILE} or --default-resources/"
                "--set-resources) does not exist on this cluster; `sinfo -s` lists the partitions"
            )
        return None
    entries = [dict(field.split("=", 1) for field in line.split() if "=" in field) for line in shown.stdout.splitlines()]
    entry = next((e for e in entries if name or e.get("Default") == "YES"), None)
    if entry is None:
        return None
    name = entry["PartitionName"]
    listed = run("sinfo", "--partition", name, "--Node", "--noheader", "--format", "%N %G")
    if listed is None or listed.returncode != 0:
        return None
    node_gpus = {}
    for line in listed.stdout.splitlines():
        node, _, gres = line.strip().partition(" ")
        node_gpus[node] = sum(int(count) for count in GPU_GRES.findall(gres.strip()))
    max_nodes = entry.get("MaxNodes", "UNLIMITED")
    return Partition(name, None if not max_nodes.isdigit() else int(max_nodes), node_gpus)


def local_gpu_memory_gib() -> list[float]:
    """Memory (GiB) of each NVIDIA GPU of this machine as `nvidia-smi` lists them; [] without nvidia-smi.
    Read without torch: Snakemake asks while planning."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listed.returncode != 0:
        return []
    return [int(line) / 1024 for line in listed.stdout.split() if line.strip().isdigit()]  # MiB -> GiB


def cluster_jobs(config: dict) -> Iterator[tuple[str, str, int, int]]:
    """(rule, what asks, nodes, GPUs per node) of the jobs whose size the config sets."""
    hardware = config["hardware"]
    cuda = hardware["accelerator"] == "cuda"
    yield ("train", "training (config keys `hardware.nodes`, `hardware.gpus_per_node`)", hardware["nodes"],
           hardware["gpus_per_node"] if cuda else 0)
    yield ("evaluate", "an evaluation job", 1, 1 if cuda else 0)
    for row in config["speed"]["rows"]:
        if row["skip_reason"] is None:
            yield ("benchmark_speed", f"speed row {row['row']}", row["nodes"], row["gpus"] // row["nodes"] if cuda else 0)


def check_partitions(config: dict, partitions: Mapping[str, str | None],
                     read: Callable[[str | None], Partition | None] = read_partition) -> None:
    """Refuse a job its partition can never run (more nodes, or more GPUs a node, than it has):
    SLURM would accept it and leave it pending forever (`PartitionNodeLimit`, `ReqNodeNotAvail`).

    `partitions`: the partition of each rule (None: the cluster's default).
    """
    seen: dict[str | None, Partition | None] = {}
    for rule, what, nodes, gpus_per_node in cluster_jobs(config):
        name = partitions.get(rule)
        if name not in seen:
            seen[name] = read(name)
        partition = seen[name]
        if partition is None or partition.nodes_with(gpus_per_node) >= nodes:
            continue
        gpus = sorted(set(partition.node_gpus.values()), reverse=True)
        raise UserError(
            f"{what} asks for {nodes} node(s) with {gpus_per_node} GPU(s) each, but the SLURM partition "
            f"{partition.name!r} of rule `{rule}` has {len(partition.node_gpus)} node(s) "
            f"(MaxNodes={partition.max_nodes or 'UNLIMITED'}; GPUs per node: {', '.join(map(str, gpus)) or 'none'}), "
            f"so the job would wait forever; lower them (`--config 'hardware={{nodes: ..., gpus_per_node: ...}}'`), "
            f"leave the row out with `runs_filter`, or give `{rule}` a larger partition under "
            f"set-resources in {SLURM_PROFILE}"
        )


def check_cluster(config: dict, *, slurm: bool, partition: str | None, machine_gpus: int | None,
                  rule_partitions: Mapping[str, str] = {},
                  read: Callable[[str | None], Partition | None] = read_partition,
                  local_gpus: int | None = None) -> None:
    """Refuse, before any job is submitted, what the scheduler could never run.

    `partition`: the profile's default `slurm_partition` (None when the profile sets none);
    `rule_partitions`: a rule's own `slurm_partition` (set-resources); `read`: how a partition's
    limits are learnt (`read_partition` asks SLURM); `machine_gpus`: the N of `--resources gpu=N`
    (None when not given); `local_gpus`: the GPUs nvidia-smi lists here, checked when `machine_gpus`
    is not given (None: not looked up).
    """
    hardware = config["hardware"]
    if slurm:
        if partition is not None and not partition.strip():
            raise UserError(
                f"{SLURM_PROFILE}: `slurm_partition` is empty; set it to your cluster's partition "
                "(`sinfo -s` lists them) under default-resources in that file, or run with "
                "`--default-resources slurm_partition=NAME`"
            )
        partitions = {rule: rule_partitions.get(rule, partition) for rule, *_ in cluster_jobs(config)}
        check_partitions(config, partitions, read)
        return
    if hardware["nodes"] > 1:
        raise UserError(
            f"config key `hardware.nodes` is {hardware['nodes']}: runs on several nodes need SLURM; "
            "run with `--workflow-profile profiles/slurm`, or set `--config 'hardware={nodes: 1}'`"
        )
    if hardware["accelerator"] != "cuda" or (machine_gpus is None and local_gpus is None):
        return
    wanted = [("config key `hardware.gpus_per_node`", hardware["gpus_per_node"])]
    wanted += [
        (f"speed row {row['row']}", row["gpus"])
        for row in config["speed"]["rows"] if row["skip_reason"] is None
    ]
    if machine_gpus is None:
        for what, gpus in wanted:
            if gpus > local_gpus:
                found = f"{local_gpus} CUDA GPU(s)" if local_gpus else "no CUDA GPU"
                lower = (f"lower it (`--config 'hardware={{gpus_per_node: {local_gpus}}}'`, `runs_filter` for a "
                         "speed row), " if local_gpus else "")
                raise UserError(
                    f"{what} asks for {gpus} GPUs but nvidia-smi finds {found} on this machine; {lower}run it on "
                    "a cluster (`--workflow-profile profiles/slurm`), or rehearse the paper preset on a CPU with "
                    "`--configfile tests/workflow/paper_rehearsal.yaml` (`--resources gpu=N` states the GPUs yourself)"
                )
        return
    for what, gpus in wanted:
        if gpus > machine_gpus:
            raise UserError(
                f"{what} asks for {gpus} GPUs but `--resources gpu={machine_gpus}` says this machine "
                f"has {machine_gpus}; lower it (e.g. `--config 'hardware={{gpus_per_node: {machine_gpus}}}'`), "
                "remove the row with `runs_filter`, or run on a cluster (`--workflow-profile profiles/slurm`)"
            )
