"""Ray Train job tests' helpers: this test's own train worker processes, and the checkpoints a
run has uploaded / registered in storage (shared by the distil and fine-tune job tests)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

from distil import storage


def descendants(pid: int) -> list[int]:
    """PIDs below ``pid`` (this test's own Ray processes only, never another user's)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def train_worker_pids() -> list[int]:
    pids = []
    for pid in descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "RayTrainWorker" in cmd:
            pids.append(pid)
    return pids


def checkpoint_steps(run_url: str) -> list[int]:
    fs, path = storage.get_fs(run_url)
    fs.invalidate_cache()
    try:
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(int(n.split("-")[1]) for n in names if n.startswith("step-"))


def registered_steps(run_url: str) -> list[int]:
    """Checkpoints Ray Train has registered (its snapshot in storage), not just uploaded dirs."""
    try:
        text = storage.read_bytes(storage.join(run_url, "checkpoint_manager_snapshot.json"))
    except FileNotFoundError:
        return []
    return sorted({int(m) for m in re.findall(r"step-(\d{8})", text.decode())})


class KillAfterFirstCheckpoint:
    """A thread that SIGKILLs one of this test's Ray Train workers as soon as the run under
    ``run_url`` has a registered checkpoint; ``killed`` / ``registered_at_kill`` say what it did."""

    def __init__(self, run_url: str, timeout_s: float = 240) -> None:
        self.run_url, self.timeout_s = run_url, timeout_s
        self.killed: list[int] = []
        self.registered_at_kill: list[int] = []
        self.seen: dict[str, object] = {}
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            steps, pids = registered_steps(self.run_url), train_worker_pids()
            self.seen.update(steps=steps, pids=pids)
            if steps and pids:
                os.kill(pids[-1], signal.SIGKILL)
                self.killed.append(pids[-1])
                self.registered_at_kill.append(steps[-1])
                return
            time.sleep(0.2)

    def __enter__(self) -> KillAfterFirstCheckpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(5)


def report_log_callback(path: str):
    """A Ray Train ``UserCallback`` (run in Ray Train's controller, not in this process) that
    appends one JSON line per report it receives: rank 0's step and whether a checkpoint came
    with it. Built here so the class pickles by value (the controller cannot import tests/)."""
    import json

    from ray.train import UserCallback

    class ReportLog(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps({"step": metrics[0]["step"], "ckpt": checkpoint is not None}))
                f.write("\n")

    return ReportLog()
