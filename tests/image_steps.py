"""The pip steps of infra/docker/Dockerfile, read from the file itself, so the fresh-venv install
the tests run (the ``installed_distil`` fixture) is the image's install, not a copy that drifts.

One deviation, made in ``local_steps``: ``--index-url`` goes. This machine reaches only PyPI and
its own wheel folder, where the same torch version (CPU build) lies; the image takes it from the
PyTorch index of its variant. Everything else (specs, flags, order) is used as written.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "infra" / "docker" / "Dockerfile"
DROPPED = {"--no-cache-dir"}  # pip's download cache only: no effect on what gets installed


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions; the unnamed last stage is ``final`` (its FROM included)."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for ins, args in instructions(text):
        if ins == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert m, f"FROM {args}"
            current = found.setdefault(m.group(2) or "final", [])
        if current is not None:
            current.append((ins, args))
    return found


def pip_steps(variant: str, text: str | None = None) -> list[list[str]]:
    """The ``pip install`` argument lists the ``variant`` image runs, in order: those of the stage
    ``FROM torch-${VARIANT}`` selects, then the final stage's."""
    text = DOCKERFILE.read_text() if text is None else text
    st = stages(text)
    base = st["final"][0][1]
    assert base == "torch-${VARIANT}", f"the final stage starts FROM {base}, not torch-${{VARIANT}}"
    steps = []
    for ins, args in st[f"torch-{variant}"] + st["final"]:
        if ins != "RUN":
            continue
        for command in args.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                steps.append([w for w in words[2:] if w not in DROPPED])
    return steps


def local_steps(variant: str = "cpu") -> list[list[str]]:
    """``pip_steps`` as this machine can run them (no ``--index-url``; see the module doc)."""
    out = []
    for step in pip_steps(variant):
        args = list(step)
        if "--index-url" in args:
            i = args.index("--index-url")
            del args[i : i + 2]
        out.append(args)
    return out
