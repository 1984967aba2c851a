"""How a job asks the scheduler for resources and starts its processes: one process, torchrun on
one machine, or srun + torchrun across SLURM nodes; and which GPUs a job on a shared machine uses.

Snakemake counts GPUs as a resource but does not say which ones a job gets, so concurrent jobs
on one machine claim disjoint GPUs here, with one lock file per GPU. Under SLURM, SLURM assigns
the GPUs (CUDA_VISIBLE_DEVICES) and the nodes; nothing is claimed here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from filelock import FileLock, Timeout

from phi3v.errors import UserError, entry_point

# Rendezvous ports of multi-node jobs, one per SLURM job id: below Linux's ephemeral range (32768+),
# so no outgoing connection holds one; torchrun's default 29500 would be shared by every job.
RENDEZVOUS_PORTS = range(20000, 30000)
# Machine-wide, so that jobs of different workflow runs on one machine see each other's claims.
DEFAULT_LOCK_DIR = os.path.join(tempfile.gettempdir(), "phi3v-gpu-locks")
# The machine's GPU count for claims, as the workflow read it from `--resources gpu=N`.
MACHINE_GPUS_VARIABLE = "PHI3V_GPUS_ON_MACHINE"


# ---------------------------------------------------------------------------------------------
# How a job starts its processes


def under_slurm(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a SLURM allocation (SLURM then owns CUDA_VISIBLE_DEVICES and the node list)."""
    return "SLURM_JOB_ID" in env


def slurm_allocation(env: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """(number of nodes, node list) of the SLURM job this process runs in.

    Snakemake's SLURM job step removes most SLURM_* variables before it starts a rule (keeping
    SLURM_JOB_ID), so when they are missing the job is looked up with `scontrol`.
    """
    if "SLURM_JOB_NODELIST" in env and ("SLURM_JOB_NUM_NODES" in env or "SLURM_NNODES" in env):
        return int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES"))), env["SLURM_JOB_NODELIST"]
    job_id = env["SLURM_JOB_ID"]
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True)
    fields = dict(re.findall(r"(\w+)=(\S+)", shown.stdout))
    if shown.returncode or "NumNodes" not in fields or "NodeList" not in fields:
        raise UserError(f"cannot read SLURM job {job_id} with `scontrol show job`: {shown.stderr.strip()}")
    return int(fields["NumNodes"].split("-")[0]), fields["NodeList"]


def launch_command(
    module_args: Sequence[str],
    *,
    processes_per_node: int,
    nodes: int = 1,
    env: Mapping[str, str] = os.environ,
    python: str = sys.executable,
) -> list[str]:
    """The command that runs `python -m <module_args...>` on `nodes` x `processes_per_node` processes.

    - 1 process on 1 node: plain python (no launcher to get in the way of debuggers; DeepSpeed's
      group of one is made by the trainer, phi3v.training.distributed.single_process_rendezvous).
    - several processes on 1 node: `torchrun --standalone`.
    - several nodes: `srun` starts one torchrun per node; they meet at the first node of the
      allocation (c10d rendezvous), with the SLURM job id as the rendezvous id.
    """
    if processes_per_node < 1 or nodes < 1:
        raise UserError(f"processes_per_node ({processes_per_node}) and nodes ({nodes}) must be >= 1")
    if nodes == 1 and processes_per_node == 1:
        return [python, "-m", *module_args]
    torchrun = [python, "-m", "torch.distributed.run", f"--nproc-per-node={processes_per_node}"]
    if nodes == 1:
        return [*torchrun, "--standalone", "-m", *module_args]
    if not under_slurm(env):
        raise UserError(
            f"a run on {nodes} nodes needs a SLURM allocation (SLURM_JOB_ID is not set): run the "
            "workflow with `--workflow-profile profiles/slurm`, or set nodes: 1"
        )
    allocated, nodelist = slurm_allocation(env)
    if allocated != nodes:
        raise UserError(f"the run asks for {nodes} nodes but the SLURM job has {allocated}")
    return [
        "srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        *torchrun,
        f"--nnodes={nodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={node_address(first_node(nodelist, env), env)}:{rendezvous_port(env['SLURM_JOB_ID'])}",
        f"--rdzv-id={env['SLURM_JOB_ID']}",
        "-m", *module_args,
    ]


def rendezvous_port(job_id: str) -> int:
    """The port a SLURM job's torchrun agents meet at on its first node, from the job id: jobs that
    share a first node meet at different ports (two collide only if their ids differ by 10000·k)."""
    number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return RENDEZVOUS_PORTS[number % len(RENDEZVOUS_PORTS)]


def first_node(nodelist: str, env: Mapping[str, str] = os.environ) -> str:
    """First host of a SLURM node list (`gpu[07-09,12],cpu1` -> `gpu07`), as SLURM expands it."""
    try:
        shown = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               env=dict(env), timeout=30)
        hosts, reason = (shown.stdout.split() if shown.returncode == 0 else []), shown.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        hosts, reason = [], str(error)
    if not hosts:
        raise UserError(f"cannot expand the SLURM node list {nodelist!r} with `scontrol show hostnames`: "
                        f"{reason or 'it printed no host'}")
    return hosts[0]


def node_address(node: str, env: Mapping[str, str] = os.environ) -> str:
    """The address SLURM reaches `node` at (its NodeAddr, which defaults to the node name).

    They differ where several node names share a host (cluster/local_slurm.sh with NODES > 1).
    """
    try:
        shown = subprocess.run(["scontrol", "show", "node", "--oneliner", node], capture_output=True,
                               text=True, env=dict(env), timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return node
    address = re.search(r"\bNodeAddr=(\S+)", shown.stdout)
    return address.group(1) if shown.returncode == 0 and address else node


# ---------------------------------------------------------------------------------------------
# GPUs of a shared machine


def machine_gpu_ids(total: int, env: Mapping[str, str] = os.environ) -> list[str]:
    """The ids of the `total` GPUs that jobs on this machine share: the first `total` of an inherited
    CUDA_VISIBLE_DEVICES (a job claims among those, never beside them), else 0 .. total-1."""
    inherited = env.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return [str(gpu) for gpu in range(total)]
    ids = [gpu.strip() for gpu in inherited.split(",") if gpu.strip()]
    if len(ids) < total:
        raise UserError(
            f"CUDA_VISIBLE_DEVICES={inherited!r} shows {len(ids)} GPU(s) but jobs are to share {total} "
            f"(--resources gpu / ${MACHINE_GPUS_VARIABLE} / --gpus-on-machine): lower that count to {len(ids)} "
            "or widen CUDA_VISIBLE_DEVICES"
        )
    return ids[:total]


def machine_gpu_count(env: Mapping[str, str] = os.environ) -> int:
    """GPUs this machine shares among jobs: $PHI3V_GPUS_ON_MACHINE, else all visible to this process."""
    if env.get(MACHINE_GPUS_VARIABLE):
        return int(env[MACHINE_GPUS_VARIABLE])
    import torch

    return torch.cuda.device_count()


@contextlib.contextmanager
def claim_gpus(
    count: int, lock_dir: str | os.PathLike, total: int, timeout_s: float = 3600.0,
    ids: Sequence[str] | None = None,
) -> Iterator[list[int]]:
    """Hold `count` of the machine's `total` GPUs exclusively (file locks) for the block.

    The locks are advisory `flock`s (filelock): the kernel releases them when the process dies, so a
    killed job never leaves a GPU claimed. Yields the indices into `ids` (the GPUs' ids, by default
    0 .. total-1) of the GPUs held; a lock is named by the GPU's id, so runs that see the machine's
    GPUs through different CUDA_VISIBLE_DEVICES still exclude each other.
    """
    ids = [str(gpu) for gpu in range(total)] if ids is None else list(ids)
    if count > total:
        raise UserError(
            f"the job asks for {count} GPUs but this machine has {total}: lower the run's gpus "
            "or run it on a cluster (profiles/slurm)"
        )
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    # A lock per GPU, named by its id (MIG ids hold slashes); mode 0o666 lets jobs of every account take it.
    locks = [FileLock(Path(lock_dir) / f"gpu{gpu_id.replace('/', '_')}.lock", mode=0o666) for gpu_id in ids[:total]]
    deadline = time.monotonic() + timeout_s
    held: list[int] = []
    try:
        while len(held) < count:
            for gpu in range(total):
                if len(held) < count and gpu not in held:
                    with contextlib.suppress(Timeout):
                        locks[gpu].acquire(blocking=False)
                        held.append(gpu)
            if len(held) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not claim {count} free GPUs in {timeout_s:.0f} s")
                time.sleep(1.0)
        yield sorted(held)
    finally:
        for gpu in held:
            locks[gpu].release()


@contextlib.contextmanager
def visible_gpus(
    count: int, *, total: int | None = None, lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR,
    env: dict | None = None,
) -> Iterator[dict]:
    """Claim `count` GPUs (unless SLURM already assigned them) and yield the environment with
    CUDA_VISIBLE_DEVICES set to them; a job that runs in this process passes `os.environ`.

    `total`: the machine's GPUs; when None, see `machine_gpu_count`. Under an inherited
    CUDA_VISIBLE_DEVICES, claimed GPU i is its i-th entry (`machine_gpu_ids`).
    """
    env = dict(os.environ) if env is None else env
    if not count or under_slurm(env):
        yield env
        return
    total = machine_gpu_count(env) if total is None else total
    ids = machine_gpu_ids(total, env) if count <= total else None  # claim_gpus refuses count > total
    with claim_gpus(count, lock_dir, total, ids=ids) as gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[gpu] for gpu in gpus)
        yield env


def format_command(command: Sequence[str]) -> str:
    """The command as one shell-quoted line, for logs."""
    return shlex.join(command)


def launcher_command(module_args: Sequence[str | os.PathLike], *, nodes: int, processes_per_node: int, gpus: int,
                     python: str = sys.executable) -> list[str]:
    """`python -m phi3v.launch ... -- <module_args>`: how a workflow job starts its processes."""
    return [python, "-m", "phi3v.launch", "--nodes", str(nodes), "--processes-per-node", str(processes_per_node),
            "--gpus", str(gpus), "--", *map(str, module_args)]


def error_lines(log_text: str, limit: int = 20) -> list[str]:
    """The error a child process wrote into the job's log: its last `error: ...` message (with the
    lines that follow it), else the exception line that ends a traceback, else nothing."""
    lines = log_text.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if starts:
        return lines[starts[-1]:][:limit]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if tracebacks:
        # The exception line: the first unindented line after the traceback's frames.
        return next(([line] for line in lines[tracebacks[-1] + 1:] if line and not line[0].isspace()), [])
    return []


def run_launched(command: Sequence[str], log: str) -> int:
    """Run a launcher command with its output in this job's log (stdout); its exit status.

    On failure the console gets the child's own error line, not only the log's name."""
    print("$ " + format_command(command), flush=True)
    completed = subprocess.run(command, stdout=sys.stdout, stderr=subprocess.STDOUT)
    if completed.returncode:
        sys.stdout.flush()
        error = error_lines(Path(log).read_text(errors="replace")) if Path(log).is_file() else []
        module = command[command.index("--") + 1]
        print("\n".join([*error, f"{module} failed with exit status {completed.returncode}; full log: {log}"]),
              file=sys.__stderr__)
    return completed.returncode


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m phi3v.launch [options] -- MODULE ARGS...`: claim GPUs, then run the module."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m phi3v.launch", description=main.__doc__)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--processes-per-node", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node the job uses (0: CPU)")
    parser.add_argument("--gpus-on-machine", type=int, default=None,
                        help=f"GPUs this machine has, shared by concurrent jobs (default: ${MACHINE_GPUS_VARIABLE}, else all visible)")
    parser.add_argument("--lock-dir", default=DEFAULT_LOCK_DIR)
    parser.add_argument("module_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    module_args = args.module_args[1:] if args.module_args[:1] == ["--"] else args.module_args
    if not module_args:
        parser.error("give the module to run after --")
    command = launch_command(module_args, processes_per_node=args.processes_per_node, nodes=args.nodes)
    with visible_gpus(args.gpus, total=args.gpus_on_machine, lock_dir=args.lock_dir) as env:
        print(f"launch: {format_command(command)}", file=sys.stderr, flush=True)
        if "CUDA_VISIBLE_DEVICES" in env and not under_slurm(env):
            print(f"launch: GPUs {env['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
        env.pop("PHI3V_AUTO_CLASSES", None)  # the module loads models: phi3v registers its Auto classes
        return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
