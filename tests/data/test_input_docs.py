"""What docs/stages/prepare.md and the README say about inputs is what the code does: the table
of formats and extensions, the compressions, ``--format``'s values, every dead-letter reason a
reader gives, and the refusal's words (as ``tests/test_docs.py`` does for commands)."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

from distil.data.config import PrepareConfig
from distil.data.readers import list_inputs
from distil.data.readers.compression import NAMES
from distil.data.readers.compression import SUFFIXES as COMPRESSIONS
from distil.data.readers.files import COMPRESSIBLE, FORMATS, SUFFIXES

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "stages" / "prepare.md"
READERS = REPO / "distil" / "data" / "readers"


def section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"\n{title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_table_of_formats_is_the_codes():
    rows = table_rows(section("## Inputs and readers"), "format")
    documented = {ticked(r[0])[0]: r for r in rows}
    assert list(documented) == list(FORMATS)
    for fmt, row in documented.items():
        suffixes = [t for t in ticked(row[1]) if re.fullmatch(r"\.[a-z]+", t)]
        assert sorted(suffixes) == sorted(SUFFIXES[fmt]), fmt
        assert row[2] == ("yes" if fmt in COMPRESSIBLE else "no"), fmt


def test_the_compressions_named_are_the_codes():
    text = section("## Inputs and readers")
    paragraph = text[text.index("**Compression**") :].split("\n\n")[0]
    named = re.findall(r"`(\.[a-z0-9]+)` \(([a-z0-9]+)", paragraph)
    assert dict(named) == NAMES and sorted(NAMES) == sorted(COMPRESSIONS)


def test_format_option_values_are_the_codes():
    literal = typing.get_args(PrepareConfig.model_fields["format"].annotation)
    assert literal == ("auto", *FORMATS)
    row = next(r for r in table_rows(section("## Options"), "flag") if r[0] == "`--format`")
    assert ticked(row[2]) == ["auto", *FORMATS]


def _reader_reasons() -> set[str]:
    """Every reason a reader in distil/data/readers/ gives a dead letter: the third argument of
    each ``DeadLetter(...)`` written as a string, and the compressed-stream reasons."""
    out: set[str] = set()
    for path in READERS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeadLetter":
                arg = node.args[2] if len(node.args) > 2 else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    out.add(arg.value)
            if (
                isinstance(node, ast.FunctionDef) and node.name == "_truncation_reason"
            ):  # returns (reason, detail) pairs
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Tuple) and isinstance(sub.elts[0], ast.Constant):
                        out.add(sub.elts[0].value)
    return out


def test_every_dead_letter_reason_is_documented_and_no_other():
    reasons = _reader_reasons()
    assert {"malformed_json", "unclosed_quote", "truncated_compressed_stream"} <= reasons
    documented = {ticked(r[0])[0] for r in table_rows(section("### Bad input"), "reason")}
    assert documented == reasons


def test_the_readme_names_every_format_and_compression():
    # how the README's pipeline line names each format
    names = {
        "wiki": "Wikipedia XML dumps",
        "text": "text",
        "jsonl": "JSON lines/arrays",
        "csv": "CSV",
        "tsv": "TSV",
        "parquet": "Parquet",
        "arrow": "Arrow (datasets\n save_to_disk)",
    }
    readme = (REPO / "README.md").read_text()
    line = readme[readme.index(" corpora: ") : readme.index("1. prepare")]
    assert [names[f] in line for f in FORMATS] == [True] * len(FORMATS)
    assert all(kind in line for kind in NAMES.values())


def test_the_refusal_shown_in_the_docs_is_the_codes(tmp_path):
    block = section("## Inputs and readers").split("```text\n", 1)[1].split("```", 1)[0]
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "report.docx").write_bytes(b"PK")
    (root / "part-0001.jsonl.gz").write_text('{"text": "plain"}\n')
    (root / "a.txt").write_text("a book\n")
    listing = list_inputs([str(root)])
    try:
        listing.check(skip_unknown=False)
    except ValueError as e:
        got = f"distil prepare: error: {e}".replace(str(tmp_path) + "/", "")
    # the docs show the error's first lines (the list of readable formats follows)
    assert got.startswith(block.rstrip("\n") + "\nReadable formats: ")
