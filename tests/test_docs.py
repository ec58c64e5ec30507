"""README.md and docs/: every relative link (and its #anchor) lands, and every command a reader
would copy — ``distil …``, ``python jobs/….py …``, ``python pipelines/….py …`` and the
``python jobs/…`` of a ``ray job submit … --`` — parses with the real parsers, as written. The
kinds of drift a new user's read found are caught too: a file path or a ``distil.…`` name that no
longer exists, a ``packaged:`` model that is not packaged, and a stage option missing from its
page's options table."""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\w)|(?<=\w)_", "", heading.strip().lower())
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_land(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(
                f"{target}: no {dest.relative_to(REPO) if REPO in dest.parents else dest}"
            )
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}:\n  " + "\n  ".join(broken)


def test_the_anchor_rule_matches_githubs():
    assert slug("Stage 2 — teacher logits (`distil logits`, `distil teacher adapt`)") == (
        "stage-2--teacher-logits-distil-logits-distil-teacher-adapt"
    )
    assert slug("Day two: your corpus, your teacher") == "day-two-your-corpus-your-teacher"


PREFIXES = ("distil ", "python jobs/", "python pipelines/", "ray job submit ")


def commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every command line in a fenced block: continuation lines joined,
    comments dropped, ``$(...)``/``eval`` lines and placeholders in <angle brackets> kept as
    plain words (they are values, which is all the parsers see)."""
    out = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if not line.startswith(PREFIXES) or "$(" in line:
                    continue
                try:
                    argv = shlex.split(line, comments=True)
                except ValueError:
                    continue  # not a shell line (e.g. a fragment inside prose)
                if argv[:3] == ["ray", "job", "submit"]:
                    if "--" not in argv:
                        continue
                    argv = argv[argv.index("--") + 1 :]
                out.append((str(page.relative_to(REPO)), argv))
    return out


def _parse(argv: list[str]) -> None:
    """Parse ``argv`` the way the entry point it names does, building the stage config."""
    from distil.cli import parse_args
    from distil.config import parse_job_args

    if argv[0] == "distil":
        parse_args(argv[1:])
        return
    if argv[:2] == ["python", "-m"]:
        module = argv[2]
        rest = argv[3:]
    else:
        script = argv[1]
        module = script.removesuffix(".py").replace("/", ".")
        if module.startswith(("jobs.", "pipelines.")):
            module = "distil." + module
        rest = argv[2:]
    if module == "distil.pipelines.score_reviews":
        from distil.pipelines.score_reviews import parse_args as score_args

        score_args(rest)
        return
    import importlib

    job = importlib.import_module(module)
    if hasattr(job, "build_parser"):  # a job with a plain argparse parser (e.g. the smoke job)
        job.build_parser().parse_args(rest)
        return
    from distil.cli import STAGES, SUBGROUPS, _load

    specs = [*STAGES.values(), *(s for g in SUBGROUPS.values() for s in g.values())]
    cfg_cls = next((_load(c) for _, c, r in specs if r.split(":")[0] == module), None)
    assert cfg_cls is not None, f"{module}: no stage config known for this entry point"
    parse_job_args(cfg_cls, "", rest)


def test_every_documented_command_parses(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTIL_ROOT", "s3://acme-ml/distil")
    found = commands()
    assert len(found) >= 20, found  # the docs do show the commands
    failures = []
    for page, argv in found:
        if argv[0] == "distil" and len(argv) > 1 and argv[1] in ("stack", "report", "storage"):
            from distil.cli import build_parser

            try:
                build_parser().parse_args(argv[1:])
            except SystemExit as e:
                if e.code not in (0, None):
                    failures.append(f"{page}: {shlex.join(argv)}")
            continue
        try:
            _parse(argv)
        except SystemExit as e:
            if e.code not in (0, None):  # --help exits 0
                failures.append(f"{page}: {shlex.join(argv)}\n    exit {e.code}")
        except Exception as e:  # noqa: BLE001 - listed below with the command
            failures.append(f"{page}: {shlex.join(argv)}\n    {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


# a file path in the repository as the docs write it (`distil/...`, `jobs/...`, ...), not part of
# a URL, a longer path or a placeholder
REPO_PATH = re.compile(
    r"(?<![\w/.$<{-])((?:distil|jobs|pipelines|bench|scripts|infra|tests)/[\w./*-]*[\w/*])"
)


def test_every_repository_path_in_the_docs_exists():
    """``distil/cluster`` and the like are packaged config names (``distil/configs/…yaml``)."""
    missing = []
    for page in PAGES:
        for path in REPO_PATH.findall(page.read_text()):
            if (REPO / path).exists() or (REPO / "distil" / "configs" / f"{path}.yaml").exists():
                continue
            if "*" in path and any(REPO.glob(path)):  # infra/kuberay/rayjob-*.yaml
                continue
            if (REPO / "distil" / "configs" / path).exists():  # distil/default.yaml
                continue
            missing.append(f"{page.relative_to(REPO)}: {path}")
    assert not missing, "paths the docs name that do not exist:\n  " + "\n  ".join(missing)


DOTTED = re.compile(r"`(distil(?:\.\w+)+)")


def _resolves(name: str) -> bool:
    import importlib

    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_distil_name_in_the_docs_resolves():
    """`distil.data.shards.is_heldout` and the like name a module or an attribute that exists;
    MLflow tag names (`distil.stage`) are the tracking module's, not Python names."""
    from distil import tracking

    tags = {v for k, v in vars(tracking).items() if k.endswith("_TAG") and isinstance(v, str)}
    tags.add("distil.version")
    stale = [
        f"{page.relative_to(REPO)}: {name}"
        for page in PAGES
        for name in DOTTED.findall(page.read_text())
        if name not in tags and not _resolves(name)
    ]
    assert not stale, "names the docs use that the package lacks:\n  " + "\n  ".join(stale)


def test_every_packaged_model_in_the_docs_is_packaged():
    from distil.packaged import resolve_model_ref

    unknown = []
    for page in PAGES:
        for ref in re.findall(r"packaged:[\w.-]+\w", page.read_text()):
            if ref.split(":")[1].isupper():  # a placeholder: packaged:NAME
                continue
            try:
                resolve_model_ref(ref)
            except ValueError:
                unknown.append(f"{page.relative_to(REPO)}: {ref}")
    assert not unknown, unknown


def _table_options(page: Path) -> set[str]:
    """The options an options table of ``page`` lists: `--flag` or `yaml_key` in a row's first
    cell (`--a / --no-a`, `--a`, `--b` and `a` / `b` included)."""
    out: set[str] = set()
    for line in page.read_text().splitlines():
        if line.startswith("| `"):
            for cell in re.findall(r"`([^`]+)`", line.split("|")[1]):
                out.update(
                    w.removeprefix("--").replace("-", "_") for w in re.findall(r"[\w-]+", cell)
                )
    return out


def _stage_pages() -> list[tuple[str, str]]:
    return [
        ("docs/stages/prepare.md", "distil.data.config:PrepareConfig"),
        ("docs/stages/teacher-logits.md", "distil.teacher.config:AdaptConfig"),
        ("docs/stages/teacher-logits.md", "distil.teacher.config:LogitsConfig"),
        ("docs/stages/distil.md", "distil.train.config:DistilConfig"),
        ("docs/stages/finetune-and-score.md", "distil.sentiment.config:FinetuneConfig"),
        ("docs/stages/finetune-and-score.md", "distil.score.config:ScoreConfig"),
        ("docs/stages/eval.md", "distil.quality.eval:EvalConfig"),
        ("docs/stages/finetune-and-score.md", "distil.quality.gate:PromoteConfig"),
    ]


@pytest.mark.parametrize(("page", "config"), _stage_pages())
def test_every_option_of_a_stage_is_in_its_pages_options_table(page, config):
    """--help is generated from the config; the page's table must not lag behind it (tracking
    options are on docs/tracking.md, common to every stage)."""
    from distil.cli import _load

    cls = _load(config)
    listed = _table_options(REPO / page)
    common = {"tracking_uri", "run_group"}
    missing = sorted(f for f in cls.model_fields if f not in common and f not in listed)
    assert not missing, (
        f"{page}: options of {cls.__name__} missing from its options table: {missing}"
    )
