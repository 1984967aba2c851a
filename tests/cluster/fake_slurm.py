"""A stand-in for a SLURM cluster's command-line tools: a one-node GPU partition (4 GPUs, MaxNodes
unlimited) and a CPU partition. `fake_slurm` answers in-process; `install_tools` writes every tool
that Snakemake's SLURM executor plugin, `phi3v.workflow.resources` or `phi3v.launch` probes as an
executable, so a test behaves the same on a machine with SLURM's packages and on one without them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# What `scontrol show partition --oneliner` and `sinfo --Node --format "%N %G"` print there.
SCONTROL_PARTITIONS = (
    "PartitionName=gpu AllowGroups=ALL Default=NO MaxNodes=UNLIMITED MaxTime=2-00:00:00 Nodes=g01 TotalCPUs=64 TotalNodes=1\n"
    "PartitionName=cpu AllowGroups=ALL Default=YES MaxNodes=4 MaxTime=UNLIMITED Nodes=c[01-08] TotalCPUs=256 TotalNodes=8\n"
)
SINFO_NODES = {"gpu": "g01 gpu:a100:4(S:0-1)\n", "cpu": "".join(f"c0{i} (null)\n" for i in range(1, 9))}
# `scontrol show config`: the executor plugin reads MinJobAge to choose between sacct and squeue.
SCONTROL_CONFIG = "Configuration data as of 2026-01-01T00:00:00\nMinJobAge               = 300 sec\n"
# Every SLURM program the plugin (2.8: `which sacct`, `which squeue`, `shutil.which("sinfo")`,
# `scontrol show config`) and the workflow's checks call before a job is submitted.
TOOLS = ("scontrol", "sinfo", "squeue", "sacct")


def hostnames(nodelist: str) -> list[str]:
    """What `scontrol show hostnames` prints: `gpu[07-09,12],cpu1` -> gpu07, gpu08, gpu09, gpu12, cpu1."""
    hosts = []
    for prefix, ranges in re.findall(r"([^,\[]+)(?:\[([^\]]+)\])?,?", nodelist):
        if not ranges:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            hosts += [f"{prefix}{number:0{len(first)}d}" for number in range(int(first), int(last or first) + 1)]
    return hosts


def fake_slurm(*command: str) -> subprocess.CompletedProcess:
    tool, arguments = command[0], command[1:]
    if tool == "scontrol" and arguments[:2] == ("show", "config"):
        return subprocess.CompletedProcess(command, 0, SCONTROL_CONFIG, "")
    if tool == "scontrol" and arguments[:2] == ("show", "hostnames"):
        return subprocess.CompletedProcess(command, 0, "".join(f"{host}\n" for host in hostnames(arguments[2])), "")
    if tool == "scontrol":  # scontrol show partition [--oneliner] [NAME]
        names = [argument for argument in arguments[2:] if not argument.startswith("-")]
        name = names[0] if names else None
        lines = [line for line in SCONTROL_PARTITIONS.splitlines() if name is None or line.startswith(f"PartitionName={name} ")]
        if not lines:
            return subprocess.CompletedProcess(command, 1, "", f"slurm_load_partitions: Partition {name} not found\n")
        return subprocess.CompletedProcess(command, 0, "\n".join(lines) + "\n", "")
    if tool == "sinfo":  # sinfo --partition NAME --Node --format "%N %G" [--noheader]
        partition = arguments[arguments.index("--partition") + 1] if "--partition" in arguments else arguments[1]
        return subprocess.CompletedProcess(command, 0, SINFO_NODES.get(partition, ""), "")
    return subprocess.CompletedProcess(command, 0, "", "")  # squeue, sacct: no jobs yet


def install_tools(directory: Path) -> Path:
    """Write `TOOLS` into `directory` as executables answering like `fake_slurm`; put it first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        path = directory / tool
        path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                        f"from fake_slurm import main\nmain({tool!r})\n")
        path.chmod(0o755)
    return directory


def main(tool: str) -> None:
    answer = fake_slurm(tool, *sys.argv[1:])
    sys.stdout.write(answer.stdout)
    sys.stderr.write(answer.stderr)
    sys.exit(answer.returncode)
