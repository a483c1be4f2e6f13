"""torchrun's arguments for multi-process and multi-node train steps, on made-up environments."""

import pytest

from formula.runtime.launch import LaunchError, rendezvous, slurm_hostnames, torchrun_args


def test_one_node_is_standalone():
    assert torchrun_args(1, 4, {}) == ["--standalone", "--nproc-per-node=4"]


@pytest.mark.parametrize("nodelist, hosts", [
    ("node7", ["node7"]),
    ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
    ("a[8-11]", ["a8", "a9", "a10", "a11"]),
    ("rack1-n[098-101]-ib", ["rack1-n098-ib", "rack1-n099-ib", "rack1-n100-ib", "rack1-n101-ib"]),
    ("x1,y[2,4]", ["x1", "y2", "y4"]),
])
def test_slurm_node_lists(nodelist, hosts):
    assert slurm_hostnames(nodelist) == hosts


SLURM = {"SLURM_JOB_NODELIST": "gpu[12-13]", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
         "SLURM_JOB_ID": "4242", "SLURM_PROCID": "1"}


def test_slurm_second_node():
    assert torchrun_args(2, 8, SLURM) == [
        "--nnodes=2", "--nproc-per-node=8", "--node-rank=1", "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu12:29500", "--rdzv-id=4242"]


def test_slurm_with_master_address_and_port_given():
    r = rendezvous(2, {**SLURM, "MASTER_ADDR": "10.1.0.12", "MASTER_PORT": "31000"})
    assert (r.host, r.port, r.node_rank) == ("10.1.0.12", 31000, 1)


def test_a_slurm_job_with_fewer_nodes_than_the_stage_says_so():
    with pytest.raises(LaunchError, match="trains on 4 nodes but the Slurm job has 2"):
        torchrun_args(4, 1, SLURM)


def test_engine_set_master_and_node_rank():
    # torchrun's own names, as a Ray or Kubernetes job sets them; they win over Slurm's
    env = {"MASTER_ADDR": "head", "MASTER_PORT": "6000", "NODE_RANK": "0", "FORMULA_STEP_KEY": "ab" * 32}
    assert torchrun_args(3, 2, env)[2:] == ["--node-rank=0", "--rdzv-backend=c10d",
                                            "--rdzv-endpoint=head:6000", "--rdzv-id=" + "ab" * 8]
    with pytest.raises(LaunchError, match="NODE_RANK=3, but the stage trains on 3 nodes"):
        rendezvous(3, {**env, "NODE_RANK": "3"})


def test_nothing_says_where_the_nodes_meet():
    with pytest.raises(LaunchError, match="--executor slurm, or set MASTER_ADDR"):
        torchrun_args(2, 1, {"MASTER_ADDR": "x"})  # no node rank
    with pytest.raises(LaunchError, match="is not a number"):
        rendezvous(2, {**SLURM, "SLURM_NODEID": "one"})
