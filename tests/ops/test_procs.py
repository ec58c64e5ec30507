"""distil.ops.procs on real processes: the listening sockets it reports (what the stack's socket test
relies on), environment markers, process trees and termination."""

from __future__ import annotations

import subprocess
import sys

from distil.ops import procs

LISTEN = """
import socket, sys, time
a = socket.socket(); a.bind(("127.0.0.1", 0)); a.listen()
b = socket.socket(socket.AF_INET6); b.bind(("::", 0)); b.listen()
c = socket.socket(socket.AF_INET6); c.bind(("::ffff:127.0.0.1", 0)); c.listen()
child = __import__("subprocess").Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(a.getsockname()[1], b.getsockname()[1], c.getsockname()[1], child.pid, flush=True)
time.sleep(60)
"""


def test_listeners_marker_tree_and_terminate():
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTEN], stdout=subprocess.PIPE, text=True, env={"MARK": "m1"}
    )
    try:
        v4, any6, mapped, child = map(int, proc.stdout.readline().split())
        found = {(x.port, x.host, x.loopback) for x in procs.listening({proc.pid})}
        assert found == {(v4, "127.0.0.1", True), (any6, "::", False), (mapped, "127.0.0.1", True)}
        assert procs.environ(proc.pid).get("MARK") == "m1"
        assert procs.with_descendants({proc.pid}) == {proc.pid, child}
        assert procs.terminate({proc.pid, child}, grace_s=5) == set()
        assert not procs.alive(child)
    finally:
        proc.kill()
        proc.wait()
