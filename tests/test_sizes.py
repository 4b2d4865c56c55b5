"""The size rules of docs/architecture.md: no library module over 500 lines, no library function over 60 lines,
except the argparse boilerplate listed there (one long parser reads better than several short ones)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("yolo", "sparsity", "prune", "finetune", "reports", "pipeline")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60
# argparse boilerplate, named with its reason in docs/architecture.md ("Exceptions to the size rules")
EXCEPTIONS = {("finetune/cli.py", "build_parser"), ("reports/cli.py", "register"), ("pipeline/cli.py", "_add_common")}


def oversized(root: Path) -> list[str]:
    """'file:line: what' for every module and function over its limit, outside EXCEPTIONS."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            src = path.read_text()
            if len(src.splitlines()) > MAX_MODULE_LINES:
                found.append(f"{rel}:1: module of {len(src.splitlines())} lines (limit {MAX_MODULE_LINES})")
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in EXCEPTIONS:
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        found.append(f"{rel}:{node.lineno}: {node.name} is {n} lines (limit {MAX_FUNCTION_LINES})")
    return found


def test_library_modules_and_functions_keep_their_size():
    problems = oversized(ROOT)
    assert not problems, "\n" + "\n".join(problems)


def test_exceptions_are_named_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for file, name in EXCEPTIONS:
        assert f"`{name}`" in doc and f"`{file}`" in doc, (file, name)


def test_the_size_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (tmp_path / "yolo").mkdir()
    (tmp_path / "yolo" / "long.py").write_text(f"def long_one():\n{body}\n")
    assert oversized(tmp_path) == ["yolo/long.py:1: long_one is 71 lines (limit 60)"]
