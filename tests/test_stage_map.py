"""The stage map of ``docs/architecture.md`` ("Stage map") against the CLI's registry and the
files: every subcommand that runs a stage or helps one has a row, and each row's library, config
class, config folder, engine module, script and docs page are the ones the code uses — so a
newcomer's map cannot go stale when a module moves or a stage is added."""

from __future__ import annotations

import re
from pathlib import Path

from distil.cli import STAGES, SUBGROUPS

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "architecture.md"
COLUMNS = ["stage", "command", "library", "config class", "config folder", "engine module",
           "script", "docs"]  # fmt: skip
STAGE_NAMES = ["prepare", "logits", "distil", "finetune", "score"]
NOT_IN_THE_MAP = {"demo", "pipeline"}  # run every stage; their own line under the table


def stage_map(text: str) -> list[dict[str, str]]:
    section = text[text.index("## Stage map") :]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| stage ", "|---")):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == len(COLUMNS), line
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def code(cell: str) -> str | None:
    """The text inside a cell's backticks; None for "—"."""
    found = re.fullmatch(r"`([^`]+)`", cell)
    return found.group(1) if found else None


def registry() -> dict[str, tuple[str, str]]:
    """``distil <words>`` -> (config "module:Class", run "module:function")."""
    out = {f"distil {name}": (cfg, run) for name, (_, cfg, run) in STAGES.items()}
    for group, subs in SUBGROUPS.items():
        out.update({f"distil {group} {name}": (cfg, run) for name, (_, cfg, run) in subs.items()})
    return {k: v for k, v in out.items() if k.split()[1] not in NOT_IN_THE_MAP}


def module_path(module: str) -> str:
    return module.replace(".", "/") + ".py"


def check(rows: list[dict[str, str]]) -> list[str]:
    """What in ``rows`` disagrees with the registry and the tree (empty: the map is true)."""
    errors = []
    known = registry()
    commands = {code(r["command"]) for r in rows}
    errors += [f"no row for `{c}`" for c in sorted(set(known) - commands)]
    if sorted({r["stage"] for r in rows}) != sorted(STAGE_NAMES):
        errors.append(f"stages {sorted({r['stage'] for r in rows})}, not {sorted(STAGE_NAMES)}")
    for r in rows:
        cmd = code(r["command"])
        if cmd not in known:
            errors.append(f"`{cmd}` is not a distil subcommand")
            continue
        cfg_ref, run_ref = known[cmd]
        cfg_module, cfg_class = cfg_ref.split(":")
        run_module = run_ref.split(":")[0]
        if code(r["config class"]) != cfg_class:
            errors.append(f"{cmd}: config class {r['config class']}, the CLI's is {cfg_class}")
        library = code(r["library"]) or ""
        if not cfg_module.replace(".", "/").startswith(library.rstrip("/") + "/"):
            errors.append(f"{cmd}: library {library}, but {cfg_class} is in {cfg_module}")
        if code(r["engine module"]) != module_path(run_module):
            errors.append(f"{cmd}: engine {r['engine module']}, the CLI runs {run_module}")
        for column in ("library", "engine module", "config folder", "script"):
            path = code(r[column])
            if path is not None and not (REPO / path).exists():
                errors.append(f"{cmd}: {column} {path} does not exist")
        folder = code(r["config folder"])
        if folder is not None and not list((REPO / folder).glob("*.yaml")):
            errors.append(f"{cmd}: no YAML config in {folder}")
        script = code(r["script"])
        runs = script is not None and (REPO / script).exists()
        if runs and f'"{run_module}"' not in (REPO / script).read_text():
            errors.append(f"{cmd}: {script} does not run {run_module}")
        link = re.fullmatch(r"\[[^\]]+\]\(([^)]+)\)", r["docs"])
        if link is None or not (PAGE.parent / link.group(1)).exists():
            errors.append(f"{cmd}: docs {r['docs']} is not a link to a page")
        elif cmd not in (PAGE.parent / link.group(1)).read_text():
            errors.append(f"{cmd}: {link.group(1)} does not mention `{cmd}`")
    return errors


def test_the_stage_map_matches_the_cli_and_the_tree():
    rows = stage_map(PAGE.read_text())
    assert rows, "docs/architecture.md has no stage map"
    errors = check(rows)
    assert not errors, "docs/architecture.md stage map:\n  " + "\n  ".join(errors)


def test_a_stale_row_is_caught():
    """A moved engine module, a renamed config and a missing stage are each reported."""
    rows = stage_map(PAGE.read_text())
    moved = [dict(r) for r in rows]
    first = moved[0]
    first["engine module"] = "`distil/jobs/old_prepare.py`"
    first["config class"] = "`OldConfig`"
    errors = check(moved)
    assert any("engine `distil/jobs/old_prepare.py`" in e for e in errors), errors
    assert any("config class `OldConfig`" in e for e in errors), errors
    assert any("does not exist" in e for e in errors), errors
    dropped = [r for r in rows if code(r["command"]) != "distil score"]
    assert "no row for `distil score`" in check(dropped)
