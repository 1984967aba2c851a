"""Process launching and GPU claiming for training/evaluation jobs."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.fake_slurm import install_tools
from phi3v.errors import UserError
from phi3v.launch import (claim_gpus, first_node, launch_command, launcher_command, node_address,
                          rendezvous_port, visible_gpus)

SLURM_2_NODES = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]"}


@pytest.fixture
def slurm_tools(tmp_path):
    """PATH with SLURM's command-line tools (the fake cluster's `scontrol show hostnames` expands node lists)."""
    return str(install_tools(tmp_path / "bin"))


def test_single_process_runs_plain_python():
    assert launch_command(["phi3v.training.train", "--x"], processes_per_node=1, python="py") == ["py", "-m", "phi3v.training.train", "--x"]


def test_one_node_several_processes_uses_standalone_torchrun():
    command = launch_command(["phi3v.training.train"], processes_per_node=4, python="py", env={})
    assert command == ["py", "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone", "-m", "phi3v.training.train"]


def test_launcher_command_passes_the_job_shape():
    command = launcher_command(["phi3v.training.speed", "--out", Path("x")], nodes=2, processes_per_node=4, gpus=4, python="py")
    assert command == ["py", "-m", "phi3v.launch", "--nodes", "2", "--processes-per-node", "4", "--gpus", "4",
                       "--", "phi3v.training.speed", "--out", "x"]


def test_rendezvous_goes_to_the_node_address_slurm_knows(tmp_path):
    # Where several node names share a host (cluster/local_slurm.sh with NODES > 1), the name is no address.
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\n[ \"$2 $3\" = 'hostnames node[1-2]' ] && printf 'node1\\nnode2\\n' && exit\n"
                        "[ \"$3 $4\" = '--oneliner node1' ] && echo 'NodeName=node1 Arch=x NodeAddr=127.0.0.1 NodeHostName=vm'\n")
    scontrol.chmod(0o755)
    env = {"PATH": str(tmp_path), "SLURM_JOB_ID": "9", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[1-2]"}
    assert node_address("node1", env) == "127.0.0.1"
    assert node_address("node2", env) == "node2"  # nothing known: the name itself
    assert node_address("gpu07", {"PATH": str(tmp_path / "none")}) == "gpu07"  # no scontrol
    command = launch_command(["m"], processes_per_node=1, nodes=2, python="py", env=env)
    assert "--rdzv-endpoint=127.0.0.1:20009" in command  # the port of job 9


def test_several_nodes_use_srun_and_rendezvous_on_the_first_node(slurm_tools):
    env = {**SLURM_2_NODES, "PATH": slurm_tools}
    command = launch_command(["phi3v.training.train"], processes_per_node=8, nodes=2, python="py", env=env)
    assert command[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert "--nnodes=2" in command and "--rdzv-endpoint=gpu07:20042" in command and "--rdzv-id=42" in command
    assert command[-2:] == ["-m", "phi3v.training.train"]


def test_several_nodes_outside_slurm_or_with_the_wrong_allocation_are_refused():
    with pytest.raises(UserError, match="needs a SLURM allocation"):
        launch_command(["m"], processes_per_node=2, nodes=2, env={})
    with pytest.raises(UserError, match="asks for 4 nodes but the SLURM job has 2"):
        launch_command(["m"], processes_per_node=2, nodes=4, env=SLURM_2_NODES)


@pytest.mark.parametrize(
    "nodelist, head",
    [("node1", "node1"), ("a,b", "a"), ("gpu[07-09,12],cpu1", "gpu07"), ("x[3,5]", "x3"), ("n-1", "n-1")],
)
def test_first_node_is_the_first_host_scontrol_expands(nodelist, head, slurm_tools):
    assert first_node(nodelist, {"PATH": slurm_tools}) == head


def test_a_node_list_scontrol_cannot_expand_is_named(tmp_path):
    with pytest.raises(UserError, match=r"cannot expand the SLURM node list 'gpu\[07-08\]' with `scontrol show hostnames`"):
        first_node("gpu[07-08]", {"PATH": str(tmp_path)})  # no scontrol there


def test_concurrent_claims_get_disjoint_gpus(tmp_path):
    with claim_gpus(2, tmp_path, total=4) as first, claim_gpus(2, tmp_path, total=4) as second:
        assert sorted(first + second) == [0, 1, 2, 3]
    with claim_gpus(4, tmp_path, total=4) as all_gpus:  # released after the blocks
        assert all_gpus == [0, 1, 2, 3]


def test_claimed_gpus_map_through_an_inherited_cuda_visible_devices(tmp_path):
    # the machine's GPUs for this workflow are 4-7: claimed GPU i is the i-th of them
    inherited = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    with visible_gpus(2, total=4, lock_dir=tmp_path, env=dict(inherited)) as first, \
            visible_gpus(2, total=4, lock_dir=tmp_path, env=dict(inherited)) as second:
        assert (first["CUDA_VISIBLE_DEVICES"], second["CUDA_VISIBLE_DEVICES"]) == ("4,5", "6,7")
    # locks name the GPU, not its index: a run that sees only GPU 6 keeps another off it
    with visible_gpus(1, total=1, lock_dir=tmp_path, env={"CUDA_VISIBLE_DEVICES": "6"}) as alone, \
            visible_gpus(1, total=2, lock_dir=tmp_path, env={"CUDA_VISIBLE_DEVICES": "6,7"}) as beside:
        assert (alone["CUDA_VISIBLE_DEVICES"], beside["CUDA_VISIBLE_DEVICES"]) == ("6", "7")
    with visible_gpus(1, total=2, lock_dir=tmp_path, env={}) as plain:  # nothing inherited: the machine's own
        assert plain["CUDA_VISIBLE_DEVICES"] == "0"
    with pytest.raises(UserError, match=r"CUDA_VISIBLE_DEVICES='0,1' shows 2 GPU\(s\) but jobs are to share 4"):
        with visible_gpus(1, total=4, lock_dir=tmp_path, env={"CUDA_VISIBLE_DEVICES": "0,1"}):
            pass


def test_multi_node_jobs_meet_at_a_rendezvous_port_of_their_own():
    ports = [rendezvous_port(str(job)) for job in range(4180, 4190)]
    assert len(set(ports)) == 10 and all(20000 <= port < 30000 for port in ports)
    assert rendezvous_port("4180") == rendezvous_port("4180") and 20000 <= rendezvous_port("4180_3") < 30000


def test_claim_waits_then_times_out_and_more_than_the_machine_has_is_refused(tmp_path):
    with claim_gpus(1, tmp_path, total=1):
        with pytest.raises(TimeoutError):
            with claim_gpus(1, tmp_path, total=1, timeout_s=0.1):
                pass
    with pytest.raises(UserError, match="asks for 3 GPUs but this machine has 2"):
        with claim_gpus(3, tmp_path, total=2):
            pass


def test_a_killed_job_releases_its_gpus(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from phi3v.launch import claim_gpus\n"
         f"with claim_gpus(1, {str(tmp_path)!r}, total=1):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TimeoutError):
        with claim_gpus(1, tmp_path, total=1, timeout_s=0.1):
            pass
    holder.kill()
    holder.wait()
    start = time.monotonic()
    with claim_gpus(1, tmp_path, total=1, timeout_s=5) as gpus:
        assert gpus == [0] and time.monotonic() - start < 5


def test_the_launched_module_registers_the_auto_classes_the_launching_processes_skip(tmp_path):
    # scripts/train.py sets PHI3V_AUTO_CLASSES=0 for itself and the launcher; the module it runs loads models.
    (tmp_path / "probe.py").write_text("import os\nprint('PHI3V_AUTO_CLASSES' in os.environ)\n")
    env = {**os.environ, "PHI3V_AUTO_CLASSES": "0", "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "phi3v.launch", "--", "probe"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
