"""What jobs ask the scheduler for, GPU claims through the launcher, and the refusals that come
before anything is submitted."""

import os
import subprocess
import sys
import textwrap

import pytest

from phi3v.workflow import settings
from phi3v.errors import UserError
from phi3v.launch import MACHINE_GPUS_VARIABLE, launch_command, slurm_allocation
from phi3v.workflow.resources import Partition, check_cluster, job_resources, read_partition

from cluster.fake_slurm import fake_slurm, install_tools
from workflow.helpers import run_snakemake


@pytest.fixture(scope="module")
def paper():
    return settings.resolve_config({"preset": "paper"})


def test_local_jobs_count_gpus_as_the_gpu_resource(paper):
    assert job_resources(paper, "train", slurm=False, gpus_per_node=8) == {"mem_mb": 200000, "runtime": 1440, "gpu": 8}
    assert job_resources(paper, "data", slurm=False)["gpu"] == 0


def test_slurm_jobs_ask_for_gres_per_node_and_multi_node_training_runs_its_own_srun(paper):
    train = job_resources(paper, "train", slurm=True, gpus_per_node=8, nodes=2)
    assert train == {"mem_mb": 200000, "runtime": 1440, "nodes": 2, "cpus_per_task": 16, "gres": "gpu:8",
                     "tasks_per_gpu": 0, "mpi": "srun", "tasks": 2}
    # On one node the launcher starts the processes itself: an `mpi` key keeps the plugin's step wrapper off.
    single = job_resources(paper, "train", slurm=True, gpus_per_node=8)
    assert single["nodes"] == 1 and single["tasks"] == 1 and single["mpi"] == ""
    assert "mpi" not in job_resources(paper, "evaluate", slurm=True, gpus_per_node=1)
    # A speed row starts as training does: on several nodes, one srun task (torchrun agent) per node.
    benchmark = job_resources(paper, "benchmark", slurm=True, gpus_per_node=8, nodes=2)
    assert (benchmark["mpi"], benchmark["tasks"], benchmark["nodes"]) == ("srun", 2, 2)
    data = job_resources(paper, "data", slurm=True)
    assert data["gres"] == "" and data["cpus_per_task"] == 8
    # The keys do not depend on the values, so the benchmark can take each from its row.
    assert job_resources(paper, "benchmark", slurm=True).keys() == job_resources(paper, "benchmark", slurm=True, gpus_per_node=4).keys()


def test_check_cluster_refusals(paper):
    with pytest.raises(UserError, match=r"`slurm_partition` is empty; .*--default-resources slurm_partition=NAME"):
        check_cluster(paper, slurm=True, partition=" ", machine_gpus=None)
    check_cluster(paper, slurm=True, partition="gpu", machine_gpus=None)
    check_cluster(paper, slurm=True, partition=None, machine_gpus=None)  # plugin picks the default partition
    with pytest.raises(UserError, match=r"`hardware.gpus_per_node` asks for 8 GPUs but `--resources gpu=4`"):
        check_cluster(paper, slurm=False, partition=None, machine_gpus=4)
    check_cluster(paper, slurm=False, partition=None, machine_gpus=8)
    two_nodes = settings.resolve_config({"preset": "paper", "hardware": {"nodes": 2}})
    with pytest.raises(UserError, match=r"`hardware.nodes` is 2: runs on several nodes need SLURM"):
        check_cluster(two_nodes, slurm=False, partition=None, machine_gpus=None)
    check_cluster(two_nodes, slurm=True, partition="gpu", machine_gpus=None)


def test_speed_row_wanting_more_gpus_than_the_machine_has_is_refused():
    four = settings.resolve_config({"preset": "paper", "hardware": {"gpus_per_node": 4},
                                    "runs_filter": ["docvqa/lora-bf16-*", "speed/*-1x8"]})
    # The config says 4 GPUs a node, the row wants 8 on one node: listed as not run...
    assert all(row["skip_reason"] == "needs 8 GPUs per node" for row in four["speed"]["rows"])
    with pytest.raises(UserError, match=r"needs 8 GPUs per node but hardware is"):
        settings.resolve_config({"preset": "paper", "hardware": {"gpus_per_node": 4}, "on_unsupported": "error",
                                 "runs_filter": ["docvqa/lora-bf16-*", "speed/*-1x8"]})
    # 2 nodes x 4 GPUs hold 8 GPUs, but not 8 on one node.
    two_by_four = settings.resolve_config({"preset": "paper", "hardware": {"gpus_per_node": 4, "nodes": 2},
                                           "runs_filter": ["speed/*-1x8", "speed/*-2x16"]})
    assert {row["skip_reason"] for row in two_by_four["speed"]["rows"]} == {"needs 8 GPUs per node"}
    with pytest.raises(UserError, match=r"gpus \(6\) counts all nodes and must be a multiple of nodes \(4\)"):
        settings.resolve_config({"preset": "paper", "speed": {"rows": [
            {"strategy": "full", "attention": "eager", "precision": "bf16", "nodes": 4, "gpus": 6, "effective_batch": 8}]}})
    eight = settings.resolve_config({"preset": "paper", "runs_filter": ["docvqa/lora-bf16-*", "speed/full-eager-bf16-1x8"]})
    with pytest.raises(UserError, match=r"speed row full-eager-bf16-1x8 asks for 8 GPUs but `--resources gpu=6`"):
        check_cluster({**eight, "hardware": {**eight["hardware"], "gpus_per_node": 2}}, slurm=False,
                      partition=None, machine_gpus=6)


def test_partition_limits_are_read_from_scontrol_and_sinfo():
    assert read_partition("gpu", run=fake_slurm) == Partition("gpu", None, {"g01": 4})
    cpu = read_partition(None, run=fake_slurm)  # the cluster's default partition
    assert cpu.name == "cpu" and cpu.max_nodes == 4 and len(cpu.node_gpus) == 8
    assert cpu.nodes_with(0) == 4 and cpu.nodes_with(1) == 0
    with pytest.raises(UserError, match=r"SLURM partition 'h100' .* does not exist on this cluster; `sinfo -s`"):
        read_partition("h100", run=fake_slurm)
    assert read_partition("gpu", run=lambda *command: None) is None  # no SLURM tools: nothing to check
    unreachable = subprocess.CompletedProcess([], 1, "", "slurm_load_partitions: Unable to contact slurm controller")
    assert read_partition("gpu", run=lambda *command: unreachable) is None


def test_jobs_their_partition_can_never_run_are_refused(paper):
    read = lambda name: read_partition(name, run=fake_slurm)  # noqa: E731
    one_gpu_node = {"train": "gpu", "evaluate": "gpu", "benchmark_speed": "gpu"}
    with pytest.raises(UserError, match=r"training \(config keys `hardware.nodes`, `hardware.gpus_per_node`\) asks for 1 node\(s\) with 8 GPU\(s\) each, "
                                        r"but the SLURM partition 'gpu' of rule `train` has 1 node\(s\) \(MaxNodes=UNLIMITED; GPUs per node: 4\)"):
        check_cluster(paper, slurm=True, partition="cpu", machine_gpus=None, rule_partitions=one_gpu_node, read=read)
    four = settings.resolve_config({"preset": "paper", "hardware": {"gpus_per_node": 4},
                                    "runs_filter": ["docvqa/lora-bf16-*", "speed/*-1x4"]})
    check_cluster(four, slurm=True, partition="cpu", machine_gpus=None, rule_partitions=one_gpu_node, read=read)
    two_nodes = {**four, "hardware": {**four["hardware"], "nodes": 2}}
    with pytest.raises(UserError, match=r"asks for 2 node\(s\) with 4 GPU\(s\) each, .*partition 'gpu' of rule `train` has 1 node"):
        check_cluster(two_nodes, slurm=True, partition="cpu", machine_gpus=None, rule_partitions=one_gpu_node, read=read)
    # GPU jobs in the CPU partition (no set-resources for them): no node there has a GPU.
    with pytest.raises(UserError, match=r"partition 'cpu' of rule `train` .*GPUs per node: 0\), so the job would wait forever"):
        check_cluster(four, slurm=True, partition="cpu", machine_gpus=None, read=read)
    lmms = settings.resolve_config({"preset": "paper", "hardware": {"gpus_per_node": 4}, "evaluation": {"lmms_eval": True},
                                    "runs_filter": ["docvqa/lora-bf16-*", "speed/*-1x4"]})
    with pytest.raises(UserError, match=r"an lmms-eval protocol evaluation job asks for 1 node\(s\) with 1 GPU\(s\) each, "
                                        r"but the SLURM partition 'cpu' of rule `evaluate_lmms_eval`"):
        check_cluster(lmms, slurm=True, partition="cpu", machine_gpus=None, rule_partitions=one_gpu_node, read=read)
    check_cluster(lmms, slurm=True, partition="cpu", machine_gpus=None, read=read,
                  rule_partitions={**one_gpu_node, "evaluate_lmms_eval": "gpu"})
    demo = settings.resolve_config({"preset": "demo"})
    check_cluster(demo, slurm=True, partition="cpu", machine_gpus=None, read=read)  # CPU jobs fit anywhere


def test_allocation_is_read_with_scontrol_when_the_job_step_removed_it(tmp_path):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\n[ \"$2\" = hostnames ] && printf 'gpu03\\ngpu04\\ngpu05\\n' && exit\n"
                        "echo 'JobId=77 JobName=x NumNodes=3 NumCPUs=48 NodeList=gpu[03-05] BatchHost=gpu03'\n")
    scontrol.chmod(0o755)
    env = {"SLURM_JOB_ID": "77", "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    old_path = os.environ["PATH"]
    os.environ["PATH"] = env["PATH"]
    try:
        assert slurm_allocation(env) == (3, "gpu[03-05]")
        command = launch_command(["phi3v.training.train"], processes_per_node=8, nodes=3, python="py", env=env)
    finally:
        os.environ["PATH"] = old_path
    assert command[:5] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert "--rdzv-endpoint=gpu03:20077" in command and "--rdzv-id=77" in command


def test_concurrent_launches_run_on_disjoint_gpus(tmp_path):
    (tmp_path / "show_gpus.py").write_text(textwrap.dedent("""
        import os, sys, time
        print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
        time.sleep(float(sys.argv[1]))
    """))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           MACHINE_GPUS_VARIABLE: "4"}
    env.pop("SLURM_JOB_ID", None)
    launch = [sys.executable, "-m", "phi3v.launch", "--gpus", "2", "--lock-dir", str(tmp_path / "locks"), "--", "show_gpus"]
    jobs = [subprocess.Popen([*launch, "3"], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    seen = [job.stdout.readline().strip().split(",") for job in jobs]
    # A third job finds all four GPUs taken and waits until one of the first two ends.
    third = subprocess.run([*launch, "0"], env=env, capture_output=True, text=True, timeout=60)
    assert all(job.wait() == 0 for job in jobs) and third.returncode == 0
    assert sorted(seen[0] + seen[1]) == ["0", "1", "2", "3"]
    assert len(third.stdout.strip().split(",")) == 2


def test_workflow_refuses_before_submitting(tmp_path):
    empty = run_snakemake("-n", "--workflow-profile", "profiles/slurm")
    assert empty.returncode != 0
    assert "profiles/slurm/config.yaml: `slurm_partition` is empty" in empty.stderr + empty.stdout
    set_partition = run_snakemake("-n", "--workflow-profile", "profiles/slurm", "--default-resources",
                                  "slurm_partition=gpu", "--config", "preset=paper", "hardware={nodes: 2}",
                                  "runs_filter=[docvqa/full-bf16-*]")
    assert set_partition.returncode == 0, set_partition.stderr[-3000:]
    assert "gres=gpu:8" in set_partition.stdout and "mpi=srun, tasks=2" in set_partition.stdout
    too_many = run_snakemake("-n", "--cores", "2", "--resources", "gpu=4", "--config", "preset=paper")
    assert too_many.returncode != 0 and "asks for 8 GPUs but `--resources gpu=4`" in too_many.stderr + too_many.stdout


def test_workflow_refuses_a_job_the_partition_can_never_run(tmp_path, monkeypatch):
    """The SLURM profile on a cluster whose `gpu` partition has one node with 4 GPUs."""
    tools = install_tools(tmp_path / "bin")  # every tool the SLURM plugin probes, SLURM installed or not
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    two_nodes = run_snakemake("-n", "--workflow-profile", "profiles/slurm", "--default-resources", "slurm_partition=gpu",
                              "--config", "preset=paper", "hardware={nodes: 2, gpus_per_node: 4}",
                              "runs_filter=[docvqa/full-bf16-*]")
    assert two_nodes.returncode != 0
    assert ("asks for 2 node(s) with 4 GPU(s) each, but the SLURM partition 'gpu' of rule `train` has 1 node(s)"
            in two_nodes.stderr + two_nodes.stdout), two_nodes.stderr[-3000:]
    one_node = run_snakemake("-n", "--workflow-profile", "profiles/slurm", "--default-resources", "slurm_partition=gpu",
                             "--config", "preset=paper", "hardware={gpus_per_node: 4}", "runs_filter=[docvqa/full-bf16-*]")
    assert one_node.returncode == 0, one_node.stderr[-3000:]
