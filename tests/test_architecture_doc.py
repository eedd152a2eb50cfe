"""docs/architecture.md matches the code: the modules, files and names it cites exist, its diagram's arrows are
real imports, and its contract list is pyproject's import-linter contracts."""

from __future__ import annotations

import ast
import itertools
import re
from functools import cache
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "operator" / "turnout"
DOC = ROOT / "docs" / "architecture.md"
TEXT = DOC.read_text()
CODE = re.findall(r"`([^`\n]+)`", TEXT)
TOP = {p.stem for p in PKG.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()} - {"__init__", "__main__"}
DOTTED = re.compile(r"(?:turnout\.)?([a-z_]+)(?:\.[A-Za-z_]\w*)+|turnout\.[a-z_]+")
FILE_LIKE = (".py", ".md", ".yaml", ".toml")


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _defined(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Names bound at the top of a module or class body: defs, classes, assignments, imports."""
    out: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            out.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):  # lazy re-exports
                out.update({e.value: node for e in getattr(node.value, "elts", ()) if isinstance(e, ast.Constant)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update({(a.asname or a.name).split(".")[0]: node for a in node.names})
    return out


def resolve(dotted: str) -> str | None:
    """None when ``turnout.a.b.Name.attr`` names a module, then a name in it (and one in that class); else why not."""
    parts = dotted.removeprefix("turnout.").split(".")
    where, i = PKG, 0
    module: Path | None = PKG / "__init__.py"
    while i < len(parts) and where.is_dir():
        if (where / parts[i] / "__init__.py").exists():
            where, module = where / parts[i], where / parts[i] / "__init__.py"
        elif (where / f"{parts[i]}.py").exists():
            where = module = where / f"{parts[i]}.py"
        else:
            break
        i += 1
    rest = parts[i:]
    if not rest:
        return None
    names = _defined(_tree(module).body)
    if rest[0] not in names:
        return f"{module.relative_to(ROOT)} defines no {rest[0]!r}"
    node = names[rest[0]]
    if len(rest) == 1:
        return None
    if len(rest) == 2 and isinstance(node, ast.ClassDef):
        members = _defined(node.body)
        members.update({a.target.id: a for a in node.body if isinstance(a, ast.AnnAssign)
                        and isinstance(a.target, ast.Name)})
        return None if rest[1] in members else f"class {rest[0]} has no {rest[1]!r}"
    return f"cannot follow {'.'.join(rest)} in {module.relative_to(ROOT)}"


def _imports(module: Path) -> set[str]:
    """Every turnout module ``module`` imports, at the top or lazily, as dotted names."""
    name = ".".join(module.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
    package = name if module.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("turnout.")}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_every_cited_module_and_name_exists() -> None:
    cited = [c for c in CODE if DOTTED.fullmatch(c) and not c.endswith(FILE_LIKE)
             and (c.startswith("turnout.") or c.split(".")[0] in TOP)]
    assert len(cited) > 40, cited  # the page names the real functions, not just packages
    problems = {c: why for c in cited if (why := resolve(c))}
    assert not problems, problems


def test_every_cited_path_and_file_exists() -> None:
    files = [p.relative_to(PKG).as_posix() for p in PKG.rglob("*")]
    missing = []
    for c in CODE:
        if " " in c or "://" in c:
            continue
        if c.startswith(("operator/", "tests/", "images/", "docs/")):
            if not (ROOT / c).exists():
                missing.append(c)
        elif c.endswith(".py") or c.endswith("/"):  # a module file or folder of turnout, by its tail
            tail = c.rstrip("/")
            if not any(f == tail or f.endswith("/" + tail) for f in files):
                missing.append(c)
    assert not missing, missing


def test_links_resolve() -> None:
    for target, anchor in re.findall(r"\]\(([^)#\s]+\.md)(?:#([^)\s]+))?\)", TEXT):
        page = DOC.parent / target
        assert page.exists(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, (target, anchor)


def test_contract_list_is_pyprojects() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    section = TEXT.partition("The contracts, as `lint-imports`")[2].partition("```mermaid")[0]
    listed = re.findall(r"^\d+\. (.+)$", section, re.M)
    assert listed == [c["name"] for c in contracts]


# The diagram's nodes, as the turnout modules each stands for.
NODES = {
    "cli": ("turnout.cli", "turnout.local"),
    "controller": ("turnout.controller",),
    "gateway": ("turnout.gateway",),
    "shim": ("turnout.shim",),
    "agent": ("turnout.agent",),
    "kube": ("turnout.kube",),
    "wire": ("turnout.wire",),
    "sources": ("turnout.sources",),
    "decide": ("turnout.controller.decide", "turnout.controller.status", "turnout.controller.world",
               "turnout.controller.scalepolicy"),
    "render": ("turnout.render",),
    "resolver": ("turnout.resolver",),
    "api": ("turnout.api", "turnout.catalog", "turnout.hardware", "turnout.config", "turnout.images",
            "turnout.shimargs"),
}


def _diagram_edges() -> list[tuple[str, str]]:
    block = re.search(r"```mermaid\n(.*?)```", TEXT, re.S)
    assert block, "no mermaid diagram"
    edges = []
    for line in block.group(1).splitlines():
        line = re.sub(r'--\s*"[^"]*"\s*-->', "-->", line)
        if "-->" not in line:
            continue
        steps = [[n.strip() for n in part.split("&")] for part in line.split("-->")]
        edges += [(a, b) for left, right in itertools.pairwise(steps) for a in left for b in right]
    return edges


def test_diagram_arrows_are_real_imports() -> None:
    modules = {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PKG.rglob("*.py")}
    edges = _diagram_edges()
    assert len(edges) > 10
    for a, b in edges:
        assert a in NODES and b in NODES, (a, b)
        sources = [p for m, p in modules.items() if _under(m, NODES[a])]
        assert any(_under(i, NODES[b]) for p in sources for i in _imports(p)), f"{a} --> {b}: no such import"

