"""The module map of ``docs/architecture.md``, enforced: imports run one way only — entry points
(jobs, pipelines, demo, cli) → quality → stages' libraries → ops → shared library — and no two
modules of ``distil/`` import each other, directly or through others (imports inside functions
included: a lazy import is still a dependency). Nothing in ``distil/`` imports ``bench``,
``scripts`` or ``tests``."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "distil"

# layer of each top-level part of distil/ (a module of the shared library, or a subpackage)
SHARED = {
    "config",
    "family",
    "losses",
    "model_registry",
    "packaged",
    "progress",
    "storage",
    "tracking",
    "training",
}
STAGES = {"data", "samples", "teacher", "student", "train", "sentiment", "score"}
LAYER = {
    **dict.fromkeys(SHARED, 0),
    "ops": 1,
    **dict.fromkeys(STAGES, 2),
    "quality": 3,
    "jobs": 4,
    "pipelines": 4,
    "demo": 5,
    "chain": 5,
    "cli": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """The modules ``path`` imports (anywhere in the file), resolved to module names: ``from
    distil.ops import stack`` is ``distil.ops.stack``, not the package."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_part_of_the_package_has_a_layer():
    parts = {part(m) for m in MODULES if m != "distil"}
    assert parts <= set(LAYER), f"not in the module map: {sorted(parts - set(LAYER))}"


def upward(edges: dict[str, set[str]]) -> list[str]:
    """The imports of ``edges`` (module -> imported modules) that run back up the layers."""
    out = []
    for module, targets in edges.items():
        for target in targets:
            if (
                target.split(".")[0] in ("bench", "scripts", "tests")
                or target.startswith("distil.")
                and LAYER[part(target)] > LAYER[part(module)]
            ):
                out.append(f"{module} -> {target}")
    return sorted(out)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def package_graph() -> dict[str, set[str]]:
    return {m: imports(p) - {m, "distil"} for m, p in MODULES.items() if m != "distil"}


def test_imports_run_one_way():
    bad = upward(package_graph())
    assert not bad, "imports that run back up:\n  " + "\n  ".join(bad)


def test_no_import_circles():
    graph = {m: {t for t in ts if t in MODULES} for m, ts in package_graph().items()}
    assert not circles(graph), f"import circles: {circles(graph)}"


def stage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` (module -> imported modules) folded to the stage libraries: which stage library
    imports which other."""
    out: dict[str, set[str]] = {s: set() for s in STAGES}
    for module, targets in graph.items():
        if part(module) in STAGES:
            out[part(module)] |= {part(t) for t in targets if t.startswith("distil.")} & STAGES
    return {s: ts - {s} for s, ts in out.items()}


def stage_arrows_back(stages: dict[str, set[str]]) -> list[list[str]]:
    """Stage libraries that import one another, directly (teacher -> train -> teacher) or
    through others: the circles of the package-level graph."""
    return circles(stages)


def test_no_stage_library_imports_one_that_imports_it_back():
    stages = stage_graph(package_graph())
    found = stage_arrows_back(stages)
    assert not found, f"stage libraries that import each other: {found}"
    # the two arrows issue 33 removed stay removed
    assert "train" not in stages["teacher"] and "sentiment" not in stages["data"]


def test_the_checks_can_fail(tmp_path):
    """A planted upward import and a planted circle are found, as written in a file."""
    shared = tmp_path / "shared.py"
    shared.write_text("def f():\n    from distil.ops import stack\n")  # a lazy import counts
    assert imports(shared) == {"distil.ops.stack"}
    assert upward({"distil.storage": imports(shared)}) == ["distil.storage -> distil.ops.stack"]
    assert upward({"distil.jobs.distil": {"distil.ops.stack", "distil.train.recipe"}}) == []
    assert upward({"distil.train.recipe": {"bench.gpu_check"}}) == [
        "distil.train.recipe -> bench.gpu_check"
    ]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    # two stage libraries whose modules do not form a circle still import each other back
    planted = {
        "distil.teacher.cache": {"distil.train.stream"},
        "distil.train.stream": {"distil.data.shards"},
        "distil.train.recipe": {"distil.teacher.load"},
    }
    assert circles(planted) == []
    assert stage_arrows_back(stage_graph(planted)) == [["teacher", "train"]]
    assert stage_arrows_back(stage_graph({"distil.data.x": {"distil.sentiment.y"}})) == []
