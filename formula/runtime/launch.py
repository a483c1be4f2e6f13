"""torchrun's arguments for a train step with several processes or nodes.

One node: `--standalone`. Several: every node runs the same step, whose launcher meets the others
at a c10d rendezvous on the first node. Where that node is and which node this is come from the
environment: MASTER_ADDR / NODE_RANK when the engine sets them (torchrun's own names, as Ray or
Kubernetes jobs set them), else Slurm's (SLURM_JOB_NODELIST, SLURM_NODEID, SLURM_NNODES). Pure
functions of the environment they are given, so they are tested on made-up ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PORT = 29500


class LaunchError(Exception):
    """The environment does not say how the nodes meet."""


@dataclass(frozen=True)
class Rendezvous:
    nnodes: int
    node_rank: int
    host: str
    port: int
    run_id: str


def slurm_hostnames(nodelist: str) -> list[str]:
    """Slurm's compressed node list expanded, as `scontrol show hostnames` does:
    "gpu[01-03,07],login1" → gpu01, gpu02, gpu03, gpu07, login1."""
    names: list[str] = []
    for prefix, ranges, suffix in re.findall(r"([^,\[\]]*)(?:\[([^\]]*)\])?([^,\[\]]*),?", nodelist):
        if not (prefix or ranges or suffix):
            continue
        if not ranges:
            names.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                names.append(prefix + lo + suffix)
                continue
            width = len(lo) if lo.startswith("0") else 0
            names += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
    return names


def rendezvous(nodes: int, env: Mapping[str, str]) -> Rendezvous:
    """Where `nodes` nodes meet and which one this is, from the environment."""
    port = int(env.get("MASTER_PORT") or DEFAULT_PORT)
    run_id = env.get("FORMULA_STEP_KEY", "")[:16] or env.get("SLURM_JOB_ID") or "formula"
    if env.get("MASTER_ADDR") and env.get("NODE_RANK") is not None:
        rank = _int(env, "NODE_RANK")
        return _checked(Rendezvous(nodes, rank, env["MASTER_ADDR"], port, run_id), nodes, "NODE_RANK")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if nodelist and env.get("SLURM_NODEID") is not None:
        hosts = slurm_hostnames(nodelist)
        have = _int(env, "SLURM_NNODES") if env.get("SLURM_NNODES") else len(hosts)
        if have != nodes:
            raise LaunchError(f"the stage trains on {nodes} nodes but the Slurm job has {have}: "
                              f"ask for {nodes} (`nodes = {nodes}` does, with --executor slurm)")
        host = env.get("MASTER_ADDR") or hosts[0]
        run_id = env.get("SLURM_JOB_ID") or run_id
        return _checked(Rendezvous(nodes, _int(env, "SLURM_NODEID"), host, port, run_id), nodes,
                        "SLURM_NODEID")
    raise LaunchError(f"the stage trains on {nodes} nodes, but nothing says where they meet: build it "
                      "with --executor slurm, or set MASTER_ADDR, MASTER_PORT and NODE_RANK on each node")


def torchrun_args(nodes: int, processes: int, env: Mapping[str, str]) -> list[str]:
    """The launcher's options (before `-m MODULE ...`)."""
    if nodes <= 1:
        return ["--standalone", f"--nproc-per-node={processes}"]
    r = rendezvous(nodes, env)
    return [f"--nnodes={r.nnodes}", f"--nproc-per-node={processes}", f"--node-rank={r.node_rank}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={r.host}:{r.port}", f"--rdzv-id={r.run_id}"]


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise LaunchError(f"{name}={env[name]!r} is not a number") from None


def _checked(r: Rendezvous, nodes: int, source: str) -> Rendezvous:
    if not 0 <= r.node_rank < nodes:
        raise LaunchError(f"{source}={r.node_rank}, but the stage trains on {nodes} nodes (0 to {nodes - 1})")
    return r
