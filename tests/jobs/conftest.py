"""Job fixtures: stage 1's generated corpora (tests/data/prepare_corpus.py) and, for stage 3,
prepared shards + a real teacher cache on S3 (SeaweedFS fixture); a two-node Ray cluster on this
machine for the multi-node rehearsal."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

_spec = importlib.util.spec_from_file_location(
    "stage3_data", Path(__file__).parents[1] / "train" / "stage3_data.py"
)
stage3_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage3_data)


@pytest.fixture(scope="session")
def s3_cache(s3_server, tiny_teacher_dir, real_tokenizer_dir) -> str:
    """A committed top-k teacher cache on s3:// built from a prepared dataset on s3://."""
    root = f"s3://{s3_server.bucket}/stage3"
    prepared = stage3_data.write_prepared(f"{root}/prepared", real_tokenizer_dir)
    return stage3_data.build_cache(prepared, f"{root}/cache", tiny_teacher_dir)


@dataclass
class RayNodes:
    """A Ray cluster of several nodes on this machine (``ray.cluster_utils.Cluster``)."""

    cluster: Any
    dashboard: str  # the job API, http://127.0.0.1:PORT
    node_ids: dict[str, str]  # node name -> Ray node id
    temp_dirs: dict[str, Path]  # node name -> its own Ray temp dir (also its processes' TMPDIR)


@pytest.fixture
def two_ray_nodes(s3_server, monkeypatch) -> Iterator[RayNodes]:
    """A head (2 CPUs, dashboard and job API on a free loopback port) and a worker node (2 CPUs),
    each with its own temp dir, token auth on, every socket on loopback. The nodes' processes
    inherit this process's environment: the S3 endpoint and credentials (none go through a
    runtime_env) and PATH with this venv first (``python -m distil.jobs.…`` entrypoints)."""
    import ray._common.utils
    import ray._private.ray_constants as ray_constants
    import ray._private.utils
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default,
        ensure_token_if_auth_enabled,
    )
    from ray.cluster_utils import Cluster

    from distil.ops import stack

    # Loopback only (what `distil stack up` does): without single-machine mode Ray swaps
    # 127.0.0.1 for the machine's routable IP, where the job agent then looks for the GCS.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Cluster writes/deletes the machine-wide /tmp/ray/ray_current_cluster, which other Rays on
    # this shared machine read (`ray.init("auto")`): each node gets its own file instead, below.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    monkeypatch.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
    enable_token_auth_by_default()  # what ray.init does for a new local cluster
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)

    base = stack.free_port_block(4)
    gcs = f"127.0.0.1:{base + 3}"
    names = ("head", "worker")
    # short: Ray's unix sockets live under the temp dir (a socket path must stay < 108 bytes)
    temp = {n: Path(tempfile.mkdtemp(prefix=f"rn{n[0]}-")) for n in names}
    common = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 200 << 20}
    args = {
        "head": dict(
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=base,
            dashboard_agent_listen_port=base + 1,
            gcs_server_port=base + 3,
        ),
        "worker": dict(dashboard_agent_listen_port=base + 2),
    }
    cluster, nodes = None, {}
    old_tmpdir = os.environ.get("TMPDIR")
    try:
        # Every process of the cluster is told its GCS: a Ray helper that looks its cluster up
        # by itself (Ray Train's PlacementGroupCleaner) otherwise finds several Rays here.
        os.environ["RAY_ADDRESS"] = gcs
        for name in names:
            os.environ["TMPDIR"] = str(temp[name])  # the node's processes inherit it
            kwargs = {**common, **args[name], "temp_dir": str(temp[name])}
            if cluster is None:
                cluster = Cluster(initialize_head=True, head_node_args=kwargs)
                nodes[name] = cluster.head_node
            else:
                nodes[name] = cluster.add_node(**kwargs)
        _restore_env(old_tmpdir)
        cluster.wait_for_nodes()
        assert cluster.address == gcs, cluster.address
        # A job's driver gets RAY_ADDRESS from its node's `auto` lookup: this file in the node's
        # temp dir, else any GCS found on the machine — possibly another test's or agent's Ray.
        for d in temp.values():
            Path(ray._common.utils.get_ray_address_file(str(d))).write_text(gcs)
        yield RayNodes(
            cluster,
            f"http://127.0.0.1:{base}",
            {n: node.node_id for n, node in nodes.items()},
            temp,
        )
    finally:
        _restore_env(old_tmpdir)
        if cluster is not None:
            cluster.shutdown()
        for d in temp.values():
            shutil.rmtree(d, ignore_errors=True)


def _restore_env(tmpdir: str | None) -> None:
    os.environ.pop("RAY_ADDRESS", None)  # monkeypatch puts back any the session had
    if tmpdir is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = tmpdir
