"""``init_ray``: how every job finds its Ray cluster (one place, so every stage behaves the same).

A stage runs in one of three places: inside ``ray job submit`` (Ray sets ``RAY_ADDRESS`` to the
cluster's GCS address), as a plain process next to a running cluster (the user passes an address
or ``auto``, or has ``eval $(distil stack env)`` in their shell), or alone (an embedded Ray that
lives as long as the process). Users copy the job-API URL (``http://host:8265``) into
``RAY_ADDRESS`` because ``ray job submit`` wants it there, and ``ray.init`` refuses it; so a
loopback job-API URL is mapped to the GCS address of the cluster serving it, and a remote one is
a clear error saying what to do instead.

``wait_for_gpus`` is how a stage told to use GPUs gets them or stops with a clear error: on an
autoscaling cluster GPU nodes join minutes after they are asked for, and Ray itself would wait
forever for GPUs that never come.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("distil.ops.cluster")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class RayAddressError(ValueError):
    """An address ``init_ray`` cannot join, with the fix in the message."""


class GPUUnavailableError(RuntimeError):
    """A stage was asked to run on GPUs the Ray cluster does not have (nor got in time)."""


def resolve_address(address: str | None) -> str | None:
    """What ``ray.init(address=…)`` should get: ``None`` for an embedded Ray, a GCS
    ``host:port``, ``auto``, or a ``ray://`` client URL. ``address`` None reads ``RAY_ADDRESS``."""
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    if address is None or address in ("", "local"):
        return None
    if address == "auto" or address.startswith("ray://"):
        return address
    if address.startswith(("http://", "https://")):
        return _gcs_address_for_job_api(address)
    if ":" not in address:
        raise RayAddressError(
            f"Ray address {address!r}: expected host:port (GCS), 'auto', ray://host:10001, "
            "or the job-API URL http://host:8265 of a cluster on this machine"
        )
    return address


def _gcs_address_for_job_api(url: str) -> str:
    host = urlparse(url).hostname or ""
    fix = (
        "A driver joins a cluster through its GCS address (host:6379) or 'auto'. To run a stage "
        f"on that cluster submit it as a job: `ray job submit --address {url} -- python -m "
        "distil.jobs.<stage> …`, or set RAY_ADDRESS to the GCS address (unset it for an "
        "embedded Ray)."
    )
    if host not in LOOPBACK:
        raise RayAddressError(f"Ray address {url!r} is a job-API URL, not a cluster address. {fix}")
    from distil.ops import stack

    st = stack.status()["ray"]
    if st["healthy"] and urlparse(st["dashboard"]).port == urlparse(url).port:
        use_stack_settings(st["token_path"])
        return st["address"]
    from ray._private.services import find_gcs_addresses

    found = sorted(find_gcs_addresses())
    if len(found) == 1:
        return found[0]
    raise RayAddressError(
        f"Ray address {url!r}: no Ray cluster on this machine answers there "
        f"({len(found)} GCS servers found). Start one (`distil stack up`) or unset RAY_ADDRESS. "
        + fix
    )


def use_stack_settings(token_path: str) -> None:
    """What a driver needs to join the local stack's Ray, set in this process unless already set
    (``eval $(distil stack env)`` sets them): the stack's token — its GCS refuses a driver
    without one — and Ray's single-machine mode, without which Ray swaps the loopback address
    for the machine's routable IP, where the stack's GCS does not listen."""
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # Ray read the variable when it was imported
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        raise RayAddressError(
            f"the local stack's Ray requires token auth but RAY_AUTH_MODE={mode}: unset it or "
            "`eval $(distil stack env)` (exports RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH)"
        )
    if mode and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path)
    Config.initialize("")  # Ray read RAY_AUTH_MODE when it loaded; make it see token mode
    AuthenticationTokenLoader.instance().reset_cache()
    log.info("using the local stack's Ray token %s", token_path)


def init_ray(address: str | None = None, **init_kwargs: Any) -> str:
    """Join the cluster ``address`` (default ``RAY_ADDRESS``) or start an embedded Ray; log and
    return one line saying which. A process already connected keeps its connection.

    The embedded Ray uses ``address="local"`` so it never silently joins a stale ``ray start``
    cluster; its workers inherit this process's environment (object-storage credentials
    included), so nothing secret goes through ``runtime_env``.
    """
    import ray

    how = "already connected to"
    if not ray.is_initialized():
        target = resolve_address(address)
        if target is None:
            init_kwargs.setdefault("include_dashboard", False)
            ray.init(address="local", **init_kwargs)
            how = "started an embedded"
        else:
            ray.init(address=target, **init_kwargs)
            how = f"joined ({target})"
    return describe_cluster(how)


def describe_cluster(how: str = "connected to") -> str:
    import ray

    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    line = (
        f"{how} Ray cluster {ray.get_runtime_context().gcs_address}: {nodes} node(s), "
        f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"
    )
    log.info(line)
    return line


def cluster_gpus() -> int:
    """GPUs the joined Ray cluster has in total (busy ones included)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def request_gpus(n: int) -> None:
    """Ask the Ray autoscaler for ``n`` one-GPU bundles (``0`` withdraws the request). Without
    it, a GPU group scaled to zero stays at zero until a task is already waiting."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}] * n)


def wait_for_gpus(
    stage: str,
    wanted: int,
    *,
    wait_s: float,
    cpu_fix: str,
    at_least: int | None = None,
    gpus: Callable[[], int] = cluster_gpus,
    request: Callable[[int], None] = request_gpus,
    poll_s: float = 5.0,
    log_every_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Return the cluster's GPU count once it has ``wanted``; raise ``GPUUnavailableError`` if
    it has fewer than ``at_least`` (default ``wanted``) after ``wait_s`` seconds.

    Why wait at all: on an autoscaling cluster (infra/kuberay/raycluster.yaml) the GPU group
    starts at zero pods and a GPU node takes minutes to join, so "no GPUs now" is not "no GPUs".
    Why not wait for Ray: a GPU task or Ray Train worker group that can never be placed waits
    forever, silently. So the autoscaler is asked for the GPUs (and the request withdrawn
    after, so an idle GPU group can scale back down), and the wait is bounded.
    """
    need = wanted if at_least is None else at_least
    seen = gpus()
    if seen >= wanted:
        return seen
    deadline = clock() + wait_s
    next_log = clock()
    request(wanted)
    try:
        while True:
            now = clock()
            if now >= deadline:
                break
            if now >= next_log:
                log.warning(
                    "%s: waiting for %d GPU(s), the cluster has %d (up to %.0f s more, gpu_wait_s)",
                    stage,
                    wanted,
                    seen,
                    deadline - now,
                )
                next_log = now + log_every_s
            sleep(min(poll_s, deadline - now))
            seen = gpus()
            if seen >= wanted:
                return seen
    finally:
        request(0)
    if seen >= need:
        log.warning("%s: asked for %d GPU(s), going on with the %d there are", stage, wanted, seen)
        return seen
    asked = f"asked for {wanted} GPU(s)" + (f", needs at least {need}," if need < wanted else "")
    raise GPUUnavailableError(
        f"{stage}: {asked} but the Ray cluster has {seen} after waiting "
        f"{wait_s:g} s (gpu_wait_s). Run it on a cluster with GPU workers (the `gpu` worker group "
        "of infra/kuberay/raycluster.yaml, scaled up by the KubeRay autoscaler), raise "
        f"gpu_wait_s if GPU nodes take longer to join, or run on CPU ({cpu_fix})."
    )
