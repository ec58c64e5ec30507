"""The install files: the lock pins everything but torch, so ``make setup`` keeps a user's torch."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pins(name: str) -> dict[str, str]:
    """{normalised package name: version} of a requirements file; anything but ``name==version``
    (a range, a URL, an option line) is a failure here, not silently skipped."""
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert m, f"{name}: {line!r} is not pinned as name==version"
        key = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert key not in pins, f"{name}: {m.group(1)} pinned twice"
        pins[key] = m.group(2)
    return pins


def test_lock_pins_every_package_and_has_no_torch():
    lock = _pins("requirements.lock")
    assert len(lock) > 50
    assert "torch" not in lock, "requirements.lock must not pin torch (a user's CUDA torch is kept)"
    for pkg in ("ray", "apache-beam", "transformers", "pyarrow"):
        assert pkg in lock


def test_default_torch_file_pins_torch_and_nothing_the_lock_pins():
    torch_pins = _pins("requirements-torch.txt")
    assert torch_pins.get("torch", "").startswith("2.")
    overlap = set(torch_pins) & set(_pins("requirements.lock"))
    assert not overlap, f"pinned in both files (would fight a user's torch): {sorted(overlap)}"


def test_makefile_installs_the_default_torch_only_without_one():
    text = (REPO / "Makefile").read_text()
    assert "TORCH_SPEC ?= -r requirements-torch.txt" in text
    guarded = re.search(r"pip show torch[^\n]*\|\|[^\n]*\$\(TORCH_SPEC\)", text)
    assert guarded, "the default torch must be installed only when `pip show torch` fails"
    assert "-r requirements.lock" in text
