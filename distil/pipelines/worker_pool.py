"""A Beam SDK worker pool for ``--environment_type=EXTERNAL``, listening on loopback only.

The scheduled scoring run (infra/schedules/) runs this as a sidecar next to every Flink task
manager (``python -m distil.pipelines.worker_pool --port 50000``); the task manager asks it, on
``localhost:50000``, to start one Python SDK worker process per environment, and the reading,
inference and writing run in those processes with the image's distil, torch and model code.

Why not Beam's own ``worker_pool_main``: it binds ``[::]``, every interface, with no
authentication. Whoever reaches that port can have the pool start a worker that connects to a
control server of their choosing and runs whatever code that server sends, inside a pod that holds
the object-storage credentials. Here the pool binds 127.0.0.1 and ::1, which only containers of
the same pod reach.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

log = logging.getLogger("distil.worker_pool")

LOOPBACK = ("127.0.0.1", "[::1]")


def serve(port: int):
    """Start the pool on ``port`` on every loopback address available; returns the gRPC server."""
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
    from apache_beam.utils import thread_pool_executor

    # Beam starts each worker as `python -c …`: make that this interpreter, whatever PATH says.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    server = grpc.server(thread_pool_executor.shared_unbounded_instance())
    pool = BeamFnExternalWorkerPoolServicer(use_process=True)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    bound = []
    for host in LOOPBACK:
        try:
            if server.add_insecure_port(f"{host}:{port}") == port:
                bound.append(host)
        except RuntimeError:  # no IPv6 loopback in this pod
            pass
    if not bound:
        raise OSError(f"worker pool: cannot listen on loopback port {port} (in use?)")
    server.start()
    log.info("Beam worker pool listening on %s port %d", ", ".join(bound), port)
    return server, pool


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50000, help="loopback port (default 50000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server, pool = serve(args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # pod shutdown: stop the workers too
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(0)
        for proc in pool._worker_processes.values():  # Beam keeps no public list of them
            proc.terminate()


if __name__ == "__main__":
    main()
