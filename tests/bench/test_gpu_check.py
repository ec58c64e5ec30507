"""``bench/gpu_check.py`` (``make gpu-check``): the dry run goes through every stage's real entry
point on the CPU and prints the whole table; without ``--dry-run`` and without CUDA it stops at
once with a message saying what to do."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def _rows() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ROWS


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_fails_fast_and_says_what_to_do():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "sees no CUDA device" in out.stderr and "--dry-run" in out.stderr
    assert "GPU check on" not in out.stdout  # nothing ran


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_dry_run_prints_every_row(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    table = out.stdout[out.stdout.index("GPU check on cpu (dry run") :]
    lines = {line[:36].strip(): line[36:] for line in table.splitlines()}
    for row in _rows():
        assert row in lines, f"row {row!r} missing from:\n{table}"
    # every figure was measured, except the GPU-only ones
    for row in _rows():
        figure = lines[row]
        if row == "distil: cached, all GPUs":
            assert figure.startswith("n/a"), figure
        else:
            assert re.match(r"[\d,.]+ ?(tokens/s|ms/step|x|steps/s|rows/s)", figure), figure
    assert "MFU n/a" in lines["teacher logits: forward (bf16)"]
    # the stages really ran: their outputs are in the scratch dir
    assert (tmp_path / "cache" / "latest.json").exists()
    assert (tmp_path / "sentiment" / "gpu-check" / "manifest.json").exists()
    assert list((tmp_path / "scored").glob("run_id=gpu-check/*"))
