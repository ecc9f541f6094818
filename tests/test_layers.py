"""The package's imports point one way: no import cycles (between modules, or between the top-level packages such
as sightline.evaluate and sightline.explain), no module importing a higher layer, no private name of one module
used by another (issue 9, "Layers point one way"); benchmarks/*.py are checked for private names too.

Every module of `sightline` is read with `ast` (nothing is imported): module-level imports, imports inside
functions and under `if TYPE_CHECKING:`, `import x` and `from x import y`, relative imports resolved. A module may
import its own layer or lower ones. In LAYERS the dict order is the rank (lowest first); `x.*` means x and
everything below it; the longest matching pattern wins; a module that matches none fails the test until it is
given a layer.
"""
from __future__ import annotations

import ast
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

LAYERS: dict[str, list[str]] = {
    "base": ["sightline", "sightline.errors", "sightline.preprocessing", "sightline.progress", "sightline.decision",
             "sightline.spec"],
    "data": ["sightline.data.*"],
    "models": ["sightline.models.*"],
    "storage": ["sightline.storage.*"],  # the service's database and kept images: read by serve, the loop, the CLI
    "bundle": ["sightline.bundle"],
    "inference": ["sightline.inference.*"],  # a module or a package
    "monitor": ["sightline.monitor.*"],
    # The stages may import each other (evaluate -> explain, distill -> fit, ...) but never in a circle: the cycle
    # test covers that. Being below serve and cli, none of them may import sightline.serve or sightline._cli.
    "stages": ["sightline.train.*", "sightline.evaluate.*", "sightline.explain.*", "sightline.optimize.*",
               "sightline.loop.*"],
    "serve": ["sightline.serve.*"],
    "cli": ["sightline.cli", "sightline._cli.*"],
}
# The `sightline/__init__.py` facade reaches a few entry points lazily through importlib strings; those are not
# import statements and are not counted.

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sightline"
SCRIPTS = "benchmarks"  # scripts checked for private names (they are outside every layer)


@dataclass(frozen=True)
class Import:
    """One import of a module of the scanned package: `src` imports `dst` (and, for `from dst import name`, `name`
    when that is not itself a module), written at `where` ("path:line"), in `context`."""

    src: str
    dst: str
    name: str | None
    where: str
    context: str  # "module level", "in def f", "under TYPE_CHECKING"
    known: bool  # dst is a module that exists

    def describe(self) -> str:
        what = f"{self.dst}.{self.name}" if self.name else self.dst
        return f"{self.where} ({self.context}) imports {what}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file for every .py file of the package folder `root/package` (`__init__` = the package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


class _Visitor(ast.NodeVisitor):
    """Collects (target module, imported name, line, context) for every import, and the dotted names used as
    attributes of names bound by imports (`fit._precision` after `from sightline.train import fit`)."""

    def __init__(self, module: str, is_package: bool, modules: set[str]) -> None:
        self.module, self.is_package, self.modules = module, is_package, modules
        self.context: list[str] = []
        self.found: list[tuple[str, str | None, int, str]] = []
        self.bound: dict[str, str] = {}  # local name -> module it stands for
        self.attributes: list[tuple[str, int, str]] = []  # (dotted name, line, context)
        self._handlers: dict[type, Callable[[_Visitor, ast.AST], None]] = {}

    def _where(self) -> str:
        return self.context[-1] if self.context else "module level"

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.context.append(f"in def {node.name}")
        self.generic_visit(node)
        self.context.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def _leaf(self, node: ast.AST) -> None:
        """Literals, plain names and load/store markers hold no import and no attribute: not walked into (a third of
        the nodes of the package; ast.NodeVisitor's own visit_Constant also checks for handlers of old node types)."""

    visit_Constant = visit_Name = visit_Load = visit_Store = visit_Del = _leaf

    def visit(self, node: ast.AST) -> None:
        """ast.NodeVisitor's walk (the same order), with the handler of each node type looked up once."""
        handler = self._handlers.get(type(node))
        if handler is None:
            handler = self._handlers[type(node)] = getattr(type(self), "visit_" + type(node).__name__,
                                                           type(self).generic_visit)
        handler(self, node)

    def generic_visit(self, node: ast.AST) -> None:
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
        if name == "TYPE_CHECKING":
            self.context.append("under TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self.context.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, None, node.lineno, self._where()))
            if alias.asname:
                self.bound[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.bound[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.module.split(".")
            package = parts if self.is_package else parts[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            if alias.name != "*" and candidate in self.modules:  # `from pkg import submodule`
                self.found.append((candidate, None, node.lineno, self._where()))
                self.bound[alias.asname or alias.name] = candidate
            else:
                self.found.append((base, None if alias.name == "*" else alias.name, node.lineno, self._where()))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = []
        value: ast.expr = node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in self.bound:
            dotted = ".".join([self.bound[value.id], *reversed(chain)])
            self.attributes.append((dotted, node.lineno, self._where()))
            return  # the inner attributes are prefixes of this chain
        self.generic_visit(node)


@dataclass
class Scan:
    modules: dict[str, Path]
    imports: list[Import]  # imports of the package's modules (from the package and from the scripts)
    private_uses: list[str]  # "path:line (context) uses <dotted name>" of private names of other modules


def scan(root: Path, package: str, *, scripts: str | None = None) -> Scan:
    """Read every module of `root/package` (and every `root/scripts/*.py`) and collect their imports of the package."""
    modules = module_files(root, package)
    files = [(name, path, path.name == "__init__.py") for name, path in modules.items()]
    if scripts and (root / scripts).is_dir():
        files += [(f"{scripts}.{p.stem}", p, False) for p in sorted((root / scripts).glob("*.py"))]
    imports: list[Import] = []
    private: list[str] = []
    for name, path, is_package in files:
        visitor = _Visitor(name, is_package, set(modules))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        rel = path.relative_to(root).as_posix()
        for dst, imported, line, context in visitor.found:
            if dst != package and not dst.startswith(package + "."):
                continue
            imports.append(Import(name, dst, imported, f"{rel}:{line}", context, dst in modules))
        for dotted, line, context in visitor.attributes:
            owner, _, attr = dotted.rpartition(".")
            if owner in modules and owner != name and _is_private(attr):
                private.append(f"{rel}:{line} ({context}) uses {dotted}")
    return Scan(modules, imports, private)


def _layer_of(module: str, layers: dict[str, list[str]]) -> tuple[int, str] | None:
    best: tuple[int, int, str] | None = None  # (pattern length, rank, layer name)
    for rank, (layer, patterns) in enumerate(layers.items()):
        for pattern in patterns:
            stem = pattern[:-2] if pattern.endswith(".*") else pattern
            if module == stem or (pattern.endswith(".*") and module.startswith(stem + ".")):
                if best is None or len(stem) > best[0]:
                    best = (len(stem), rank, layer)
    return None if best is None else (best[1], best[2])


def layer_problems(result: Scan, layers: dict[str, list[str]]) -> list[str]:
    """One line per import of a higher layer, per module without a layer, per import of a missing module."""
    problems = [f"{m} has no layer: add it to LAYERS" for m in result.modules if _layer_of(m, layers) is None]
    for imp in result.imports:
        if imp.src not in result.modules:
            continue  # scripts stand outside the layers
        if not imp.known:
            problems.append(f"{imp.describe()}: no such module in the package")
            continue
        src, dst = _layer_of(imp.src, layers), _layer_of(imp.dst, layers)
        if src is not None and dst is not None and dst[0] > src[0]:
            problems.append(f"{imp.src} [{src[1]}] -> {imp.dst} [{dst[1]}]: {imp.describe()}")
    return problems


def package_of(module: str) -> str:
    """The top-level subpackage (or module) a module belongs to: sightline.evaluate.run -> sightline.evaluate."""
    return ".".join(module.split(".")[:2])


def cycles(result: Scan, group: Callable[[str], str] = lambda m: m) -> list[str]:
    """Every import cycle between modules (or between the groups `group` puts them in, e.g. `package_of`) as
    "a -> b -> a", with where each import is written: for each node that lies on a cycle, the shortest cycle
    through it (the same cycle found from two nodes is listed once)."""
    edges: dict[str, dict[str, Import]] = {group(m): {} for m in result.modules}
    for imp in result.imports:
        if imp.src in result.modules and imp.known and group(imp.dst) != group(imp.src):
            edges[group(imp.src)].setdefault(group(imp.dst), imp)
    seen: set[tuple[str, ...]] = set()
    out = []
    for start in sorted(edges):
        parent: dict[str, str] = {}
        queue = deque([start])
        found = None
        while queue and found is None:
            node = queue.popleft()
            for nxt in sorted(edges[node]):
                if nxt == start:
                    found = node
                    break
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        if found is None:
            continue
        path = [found]
        while path[-1] != start:
            path.append(parent[path[-1]])
        chain = [*reversed(path), start]  # start -> ... -> found -> start
        ring = chain[:-1]
        turn = ring.index(min(ring))
        key = tuple(ring[turn:] + ring[:turn])
        if key in seen:
            continue
        seen.add(key)
        where = "; ".join(edges[a][b].describe() for a, b in zip(chain, chain[1:]))
        out.append(f"{' -> '.join(chain)}   [{where}]")
    return out


def private_imports(result: Scan) -> list[str]:
    """Imports of a private name of another module (`from m import _x`), or of a module through a private package
    (`sightline._cli.*`) from outside the package that holds it, and uses of `module._x` attributes."""
    problems = []
    for imp in result.imports:
        if imp.name is not None and _is_private(imp.name) and imp.dst != imp.src:
            problems.append(imp.describe())
            continue
        parts = imp.dst.split(".")
        for i, part in enumerate(parts[1:], start=1):
            owner = ".".join(parts[:i])  # a private module is private to the package that holds it
            if _is_private(part) and imp.src != owner and not imp.src.startswith(owner + "."):
                problems.append(f"{imp.describe()}: {'.'.join(parts[: i + 1])} is private to {owner}")
                break
    return problems + result.private_uses


def _report(title: str, problems: list[str]) -> str:
    return f"{len(problems)} {title}:\n  " + "\n  ".join(problems)


@pytest.fixture(scope="module")
def package_scan() -> Scan:
    return scan(ROOT, PACKAGE, scripts=SCRIPTS)


def test_no_import_cycles(package_scan: Scan) -> None:
    found = cycles(package_scan)
    if found:
        pytest.fail(_report("import cycle(s)", found), pytrace=False)


def test_no_import_cycles_between_packages(package_scan: Scan) -> None:
    """sightline.evaluate and sightline.explain must not import each other even through different modules."""
    found = cycles(package_scan, package_of)
    if found:
        pytest.fail(_report("import cycle(s) between packages", found), pytrace=False)


def test_imports_point_down_the_layers(package_scan: Scan) -> None:
    found = layer_problems(package_scan, LAYERS)
    if found:
        pytest.fail(_report("layer violation(s) (lowest first: " + " < ".join(LAYERS) + ")", found), pytrace=False)


def test_no_private_names_used_across_modules(package_scan: Scan) -> None:
    found = private_imports(package_scan)
    if found:
        pytest.fail(_report("use(s) of another module's private name", found), pytrace=False)


def test_the_checker_finds_a_cycle_a_violation_and_a_private_name(tmp_path: Path) -> None:
    """The walker on a tiny package with one planted problem of each kind, and a clean copy that must pass."""
    files = {
        "pkg/__init__.py": "",
        "pkg/low.py": "from pkg.high import _secret\n",  # up a layer, and a private name
        "pkg/high.py": "import pkg.low\nimport pkg.sub\n_secret = 1\n",  # high -> sub.__init__; sub.deep -> high
        "pkg/a.py": "import pkg.b as b\n\nb._hidden()\n",  # a -> b; a private attribute of b
        "pkg/b.py": "def g():\n    from .a import thing\n    return thing\n",  # b -> a, relative, in a function
        "pkg/sub/__init__.py": "",
        "pkg/sub/deep.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import high\n",
        "pkg/stray.py": "import os\n",  # in no layer
        "scripts/run.py": "from pkg._impl import go\n",  # a private module, from outside the package
        "pkg/_impl.py": "from pkg.low import _secret as s\n",  # private name of another module
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    layers = {"low": ["pkg", "pkg.low", "pkg._impl"], "mid": ["pkg.a", "pkg.b", "pkg.sub.*"], "high": ["pkg.high"]}
    result = scan(tmp_path, "pkg", scripts="scripts")

    assert cycles(result) == [
        "pkg.a -> pkg.b -> pkg.a   [pkg/a.py:1 (module level) imports pkg.b; "
        "pkg/b.py:2 (in def g) imports pkg.a.thing]",
        "pkg.high -> pkg.low -> pkg.high   [pkg/high.py:1 (module level) imports pkg.low; "
        "pkg/low.py:1 (module level) imports pkg.high._secret]",
    ]
    assert cycles(result, lambda m: m.split(".")[1] if "." in m else m) == [  # by first-level module or package
        "a -> b -> a   [pkg/a.py:1 (module level) imports pkg.b; pkg/b.py:2 (in def g) imports pkg.a.thing]",
        "high -> low -> high   [pkg/high.py:1 (module level) imports pkg.low; "
        "pkg/low.py:1 (module level) imports pkg.high._secret]",
        "sub -> high -> sub   [pkg/sub/deep.py:3 (under TYPE_CHECKING) imports pkg.high; "
        "pkg/high.py:2 (module level) imports pkg.sub]",
    ]
    assert layer_problems(result, layers) == [
        "pkg.stray has no layer: add it to LAYERS",
        "pkg.low [low] -> pkg.high [high]: pkg/low.py:1 (module level) imports pkg.high._secret",
        "pkg.sub.deep [mid] -> pkg.high [high]: pkg/sub/deep.py:3 (under TYPE_CHECKING) imports pkg.high",
    ]
    assert private_imports(result) == [
        "pkg/_impl.py:1 (module level) imports pkg.low._secret",
        "pkg/low.py:1 (module level) imports pkg.high._secret",
        "scripts/run.py:1 (module level) imports pkg._impl.go: pkg._impl is private to pkg",
        "pkg/a.py:3 (module level) uses pkg.b._hidden",
    ]

    # The same package with the problems taken out passes.
    for rel in ("pkg/b.py", "pkg/sub/deep.py", "pkg/stray.py", "scripts/run.py", "pkg/_impl.py"):
        (tmp_path / rel).unlink()
    (tmp_path / "pkg/low.py").write_text("X = 1\n")
    (tmp_path / "pkg/a.py").write_text("from . import high\nfrom .high import __doc__ as d\n")
    clean = scan(tmp_path, "pkg", scripts="scripts")
    assert [i.dst for i in clean.imports] == ["pkg.high", "pkg.high", "pkg.low", "pkg.sub"]  # relative resolved
    assert (cycles(clean), layer_problems(clean, {"low": ["pkg.low"], "high": ["pkg.*"]}),
            private_imports(clean)) == ([], [], [])
