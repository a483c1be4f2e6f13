"""A stage with `nodes = 2` on two "nodes" of this machine: the same train step runs once per
node, as Slurm runs it, and torchrun's launchers meet at a c10d rendezvous (gloo on CPU)."""

import json
import shutil
import socket
import threading

import pytest

from conftest import ROOT
from formula.compiler.lower import lower
from formula.compiler.pipeline import compile_formula
from formula.runtime.build import Builder
from formula.runtime.cluster import log_tail, run_step, step_env
from formula.runtime.executor import Finished, Task
from formula.runtime.store import Store

pytest.importorskip("torch")


class SameCommandOnEachNode:
    """What a cluster does with a multi-node step: the command on every node, told its rank and
    where the first node is (here as torchrun's names; on Slurm, SLURM_NODEID and the node list)."""

    def __init__(self):
        self.ran_on: dict[str, int] = {}

    def run(self, task: Task) -> Finished:
        nodes = (task.resources or {}).get("nodes", 1)
        self.ran_on[task.step] = nodes
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        status = [1] * nodes

        def node(i: int) -> None:
            extra = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(i)} if nodes > 1 else {}
            status[i] = run_step(task.command(), {**step_env(task), **extra}, str(task.log))

        threads = [threading.Thread(target=node, args=(i,)) for i in range(nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return Finished(next((s for s in status if s != 0), 0), log_tail(task.log), log=task.log)

    def cancel(self) -> None:
        pass


def test_two_nodes_train_one_model(tmp_path):
    for name in ("tiny.formula", "data", "evals"):
        src = ROOT / "examples" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    formula = str(tmp_path / "tiny.formula")
    result = compile_formula(formula, ["stage.lm.nodes=2", "stage.lm.max_steps=2"])
    assert result.ok, [d.message for d in result.diagnostics]
    graph = lower(result.plan)
    assert graph.steps["train.lm"].resources == {"nodes": 2}
    executor = SameCommandOnEachNode()
    store = Store(tmp_path / "store")
    built = Builder(graph, store, formula, executor=executor, jobs=2).build(only={"train.lm"})
    lm = built.outcomes["train.lm"]
    assert built.ok, (lm.error, (tmp_path / "store" / lm.log).read_text()[-3000:] if lm.log else "")
    assert executor.ran_on["train.lm"] == 2
    out = store.object_path(lm.output)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2  # one process on each node
    log = store.log_path(lm.key)
    second = log.parent / (log.name + ".node1")  # the second node logs beside the first
    assert second.exists()
