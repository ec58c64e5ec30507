"""Processes and their listening sockets, read from ``/proc`` (Linux).

``distil stack down`` must stop only the stack's own Ray — never ``ray stop``, which ends every
Ray process on the machine — and the stack's tests list what its processes listen on. Both need
"which processes belong to this stack" and "what do they listen on"; psutil is not a dependency,
and the local stack (Ray + SeaweedFS) runs on Linux only, so this reads ``/proc`` directly.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` started with ({} when it is gone or not ours to read)."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def cmdline(pid: int) -> str:
    try:
        return (
            (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def parent(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the "(comm)" field


def with_descendants(roots: set[int]) -> set[int]:
    """``roots`` and every live process below them."""
    children: dict[int, list[int]] = {}
    for pid in pids():
        ppid = parent(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in out or not alive(pid):
            continue
        out.add(pid)
        todo += children.get(pid, [])
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is dead for our purposes (it holds no socket and runs nothing)
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def terminate(targets: set[int], grace_s: float = 3.0) -> set[int]:
    """SIGTERM ``targets``, SIGKILL whatever is left after ``grace_s``; returns the survivors
    (normally none). Short grace: once the GCS is gone, Ray's raylet and agents ignore SIGTERM
    (they wait to reconnect), so waiting longer only delays the SIGKILL."""
    me = os.getpid()
    targets = {p for p in targets if p != me}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.time() + grace_s
        while time.time() < deadline and any(alive(p) for p in targets):
            time.sleep(0.1)
        targets = {p for p in targets if alive(p)}
        if not targets:
            break
    return targets


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback


def _socket_inodes(pid: int) -> set[str]:
    fd_dir = PROC / str(pid) / "fd"
    out = set()
    try:
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def _decode(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp{,6} stores the address as 32-bit words in host (little-endian) byte order
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:  # ::ffff:127.0.0.1 is IPv4
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def listening(pid_set: set[int]) -> list[Listener]:
    """Every TCP socket in LISTEN state held by a process in ``pid_set`` (IPv4 and IPv6; UDP is
    not listed: neither Ray nor SeaweedFS serves on it)."""
    owner: dict[str, int] = {}
    for pid in pid_set:
        for inode in _socket_inodes(pid):
            owner.setdefault(inode, pid)
    out = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or f[9] not in owner:  # 0A = TCP_LISTEN
                continue
            host, port = _decode(f[1])
            pid = owner[f[9]]
            out.append(Listener(pid, cmdline(pid)[:160], host, port))
    return sorted(out, key=lambda x: (x.port, x.host))
