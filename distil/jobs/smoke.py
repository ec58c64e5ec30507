"""Cluster smoke test: a Ray task on the cluster writes to object storage; the driver reads it.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/smoke.py --output s3://distil/smoke
"""

from __future__ import annotations

import argparse
import json
import socket

import ray

from distil import storage
from distil.ops.cluster import init_ray


@ray.remote(num_cpus=0.25)
def _write(url: str, i: int) -> str:
    storage.write_json(storage.join(url, f"part-{i}.json"), {"i": i, "host": socket.gethostname()})
    return f"part-{i}.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="fsspec URL to write to")
    parser.add_argument("--tasks", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    print(init_ray(), flush=True)
    names = ray.get([_write.remote(args.output, i) for i in range(args.tasks)])
    storage.commit(args.output, {"files": names})
    got = [storage.read_json(u)["i"] for u in storage.committed_files(args.output)]
    result = {"ok": got == list(range(args.tasks)), "parts": got, "ray": ray.__version__}
    print("SMOKE", json.dumps(result))
    return result


if __name__ == "__main__":
    main()
