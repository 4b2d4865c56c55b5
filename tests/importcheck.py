"""Static import checker for import_rules.yaml (used by tests/test_imports.py; not part of the library).

Reads every import of every .py file under the rule file's packages with `ast`: at the top, inside functions,
methods and conditionals, `import x`, `from x import y` and relative imports. Each finding is one line:
`file:line: <module> imports <target>, which <rule>`.
"""

from __future__ import annotations

import ast
import fnmatch
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

import yaml

PRAGMAS = ("noqa", "type:", "fmt:", "pragma")


@dataclass(frozen=True)
class Import:
    path: str  # relative to the root, posix
    line: int
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (a `from pkg import sub` of a submodule names the submodule)
    in_function: bool
    explained: bool  # a comment on its line(s) or just above its run of imports


def load_rules(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_files(root: Path, rules: dict) -> list[Path]:
    return sorted(p for pkg in rules["packages"] for p in (root / pkg).rglob("*.py"))


def _comment_lines(source: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if text and not text.startswith(PRAGMAS):
                out[tok.start[0]] = text
    return out


def _own_line_comment(lines: list[str], comments: dict[int, str], n: int) -> bool:
    return n in comments and lines[n - 1].lstrip().startswith("#")


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.stmt, module: str, is_package: bool, root: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = _resolve(node, module, is_package)
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}" if base else a.name
        as_path = root.joinpath(*sub.split("."))
        out.append(sub if as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file() else base)
    return list(dict.fromkeys(out))


def _runs(body: list[ast.stmt]) -> dict[int, ast.stmt]:
    """For each import statement (by id), the first statement of the run of consecutive imports it belongs to."""
    first: dict[int, ast.stmt] = {}
    head = None
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            head = head or stmt
            first[id(stmt)] = head
        else:
            head = None
    return first


def read_imports(path: Path, root: Path) -> list[Import]:
    """Every import in `path` (a file under `root`)."""
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    rel = path.relative_to(root)
    module, is_package = module_name(rel), path.name == "__init__.py"
    comments, lines = _comment_lines(source), source.splitlines()
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                heads = _runs(block)
                for stmt in block:
                    if id(stmt) in heads:
                        record(stmt, heads[id(stmt)], in_function)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    def record(stmt: ast.stmt, head: ast.stmt, in_function: bool) -> None:
        own = any(n in comments for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
        explained = own or _own_line_comment(lines, comments, head.lineno - 1)
        for target in _targets(stmt, module, is_package, root):
            found.append(Import(rel.as_posix(), stmt.lineno, module, target, in_function, explained))

    visit(tree, False)
    return sorted(found, key=lambda i: (i.line, i.target))


def _package(target: str, packages: dict) -> str | None:
    top = target.split(".")[0]
    return top if top in packages else None


def _is_cli(target: str, rules: dict) -> bool:
    return any(fnmatch.fnmatchcase(target, pat) for pat in rules.get("cli_modules", []))


def rule_violations(imports: list[Import], rules: dict) -> list[str]:
    """Package direction, command-line modules and un-commented function-level imports."""
    packages = rules["packages"]
    out = []
    for imp in imports:
        own, theirs = _package(imp.module, packages), _package(imp.target, packages)
        where = f"{imp.path}:{imp.line}: {imp.module} imports {imp.target}, which"
        if theirs and _is_cli(imp.target, rules):
            out.append(f"{where} is a command-line module ({rules.get('cli_why', 'refused')})")
        elif own and theirs and theirs != own and theirs not in packages[own]["may_import"]:
            allowed = ", ".join(packages[own]["may_import"]) or "no other package"
            out.append(f"{where} breaks '{own} may import only {allowed}' ({packages[own]['why']})")
        if rules.get("function_imports_need_comment") and imp.in_function and not imp.explained:
            out.append(f"{where} sits inside a function without a comment on its line or the line above saying "
                       "why it is not at the top of the file")
    return list(dict.fromkeys(out))


def cycles(imports: list[Import], rules: dict) -> list[str]:
    """One line per group of modules that import each other (directly or round a longer loop)."""
    if not rules.get("forbid_cycles"):
        return []
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if imp.target != imp.module and _package(imp.target, rules["packages"]):
            edges.setdefault(imp.module, {}).setdefault(imp.target, imp)
    out = []
    for group in _strongly_connected(edges):
        loop = _loop_through(group, edges)
        hops = "; ".join(f"{e.path}:{e.line}: {e.module} imports {e.target}" for e in loop)
        out.append(f"{loop[0].path}:{loop[0].line}: {loop[0].module} imports {loop[0].target}, which imports it "
                   f"back (cycle: {hops}); move the shared piece into a third module")
    return out


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm; only groups of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return sorted(groups)


def _loop_through(group: list[str], edges: dict[str, dict[str, Import]]) -> list[Import]:
    """A shortest loop from the group's first module back to itself (breadth-first inside the group)."""
    start, members = group[0], set(group)
    prev: dict[str, Import] = {}
    frontier = [start]
    while start not in prev:
        frontier = [w for v in frontier for w in _step(v, edges, members, prev)]
    loop, node = [prev[start]], prev[start].module
    while node != start:
        loop.append(prev[node])
        node = prev[node].module
    return loop[::-1]


def _step(v: str, edges: dict[str, dict[str, Import]], members: set[str], prev: dict[str, Import]) -> list[str]:
    reached = []
    for w, imp in sorted(edges.get(v, {}).items()):
        if w in members and w not in prev:
            prev[w] = imp
            reached.append(w)
    return reached


def check_tree(root: str | Path, rules: dict, pending: tuple[str, ...] = ()) -> list[str]:
    """All findings for the library under `root`; files matching a `pending` glob (posix paths) are not checked."""
    root = Path(root)
    imports = [i for p in library_files(root, rules) for i in read_imports(p, root)]
    kept = [i for i in imports if not any(fnmatch.fnmatchcase(i.path, pat) for pat in pending)]
    return rule_violations(kept, rules) + cycles(kept, rules)
