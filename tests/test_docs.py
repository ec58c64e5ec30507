"""README.md and docs/: every relative link (and its #anchor) lands, and every command a reader
would copy — ``distil …``, ``python jobs/….py …``, ``python pipelines/….py …`` and the
``python jobs/…`` of a ``ray job submit … --`` — parses with the real parsers, as written."""

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
