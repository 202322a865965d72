"""How a training rule starts its processes: the launcher prefix put before ``<command> --data …``.

Torch-free (the Snakefile imports it). One function, :func:`launcher`, reads a job's resources:

* ``nodes`` (default 1) — SLURM nodes of the job;
* ``gpu`` (the SLURM plugin's key: ``--gpus``, the job's *total*) or ``gres: "gpu[:model]:N"`` (per node) —
  processes per node = GPUs per node; on a CPU-only job one process per node.

and returns

* one node, one process: ``mae`` (a plain process);
* one node, P > 1 processes: ``torchrun --standalone --nproc_per_node P -m mae``;
* N > 1 nodes: ``srun`` starts one ``torchrun`` per node (``--ntasks-per-node 1``), all meeting at a c10d
  rendezvous on the job's first node (``scontrol show hostnames``), port derived from the job id:
  ``srun … torchrun --nnodes N --nproc_per_node P --rdzv-backend c10d --rdzv-endpoint HEAD:PORT
  --rdzv-id JOB -m mae``.

Batch sizes in the configs are global, so the same study config gives the same optimisation on any
launch shape (see :func:`mae.config.batch_plan`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mae.errors import UserError

#: base of the rendezvous port; the job id modulo PORT_SPAN is added (two jobs sharing a head node differ)
BASE_PORT = 29500
PORT_SPAN = 2000


def _int(resources: Mapping[str, Any], key: str, default: int) -> int:
    value = resources.get(key)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"resources: {key}={value!r} is not an integer") from None
    if number < 0:
        raise UserError(f"resources: {key}={value!r} is negative")
    return number


def procs_per_node(resources: Mapping[str, Any]) -> int:
    """GPUs per node from ``gres`` (per node) or ``gpu`` (the job's total, split evenly over ``nodes``)."""
    nodes = max(_int(resources, "nodes", 1), 1)
    gres = str(resources.get("gres") or "")
    found = re.fullmatch(r"gpu(?::[A-Za-z0-9_.\-]+)?:(\d+)", gres)
    if found:
        return int(found.group(1))
    gpus = _int(resources, "gpu", 0)
    if gpus == 0:
        return 1
    if gpus % nodes:
        raise UserError(f"resources: gpu={gpus} (the job's total) does not split evenly over nodes={nodes}")
    return gpus // nodes


def launcher(resources: Mapping[str, Any]) -> str:
    """The command prefix that runs ``mae`` with the job's nodes × processes per node (see the module doc)."""
    nodes = max(_int(resources, "nodes", 1), 1)
    procs = procs_per_node(resources)
    if nodes == 1:
        return "mae" if procs == 1 else f"torchrun --standalone --nproc_per_node {procs} -m mae"
    head = '$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)'
    port = f"$(( {BASE_PORT} + ${{SLURM_JOB_ID:-0}} % {PORT_SPAN} ))"
    return (
        f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 --kill-on-bad-exit=1 "
        f"torchrun --nnodes {nodes} --nproc_per_node {procs} --rdzv-backend c10d "
        f"--rdzv-endpoint {head}:{port} --rdzv-id ${{SLURM_JOB_ID:-mae}} -m mae"
    )


def world_size(resources: Mapping[str, Any]) -> int:
    """Processes over all nodes of a job with these resources."""
    return max(_int(resources, "nodes", 1), 1) * procs_per_node(resources)
