"""Who may import whom (docs/ARCHITECTURE.md): every module is parsed with ``ast`` and each of its
imports, at module level, inside functions and under ``if TYPE_CHECKING:``, is checked against
the layer table. Importing does not run anything, so a rule holds even for code paths no test runs.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Layer -> the other layers it may import. "cli" is the stethoedge/ folder itself (the command line),
#: "cli_common" its standard-library-only argument helpers, "models" the shipped bundle(s).
ALLOWED: dict[str, frozenset[str]] = {
    "runtime": frozenset(),
    "data": frozenset({"runtime"}),
    "models": frozenset({"runtime"}),
    "calibration": frozenset({"runtime", "data"}),
    "train": frozenset({"runtime", "data", "models"}),
    "export": frozenset({"runtime", "data", "calibration", "train"}),
    "firmware_bridge": frozenset({"runtime", "cli_common"}),
    "cli_common": frozenset(),
    "cli": frozenset({"runtime", "data", "models", "calibration", "train", "export", "firmware_bridge", "cli_common"}),
}
#: Layers that never import torch, not even inside a function: they run on the device or build
#: quantization sets without the training stack.
TORCH_FREE = frozenset({"runtime", "data", "models", "calibration", "firmware_bridge", "cli_common"})
#: What the command line may import when it is loaded (everything else inside the command's function,
#: so `stethoedge classify` never loads train/ or export/).
CLI_EAGER = frozenset({"cli", "cli_common", "runtime"})
#: Repository folder -> layer (stethoedge/data/ is checked before stethoedge/).
FOLDERS = {"runtime": "runtime", "train": "train", "export": "export", "calibration": "calibration",
           "firmware_bridge": "firmware_bridge", "models": "models", "stethoedge": "cli"}


def layer_of_file(path: Path) -> str:
    """The layer of a repository file."""
    rel = path.relative_to(REPO).parts
    if rel[:2] == ("stethoedge", "data"):
        return "data"
    if rel == ("stethoedge", "cli_common.py"):
        return "cli_common"
    return FOLDERS[rel[0]]


def layer_of_module(name: str) -> str | None:
    """The layer of a dotted module name, or None outside stethoedge (numpy, torch, the standard library)."""
    parts = name.split(".")
    if parts[0] != "stethoedge":
        return None
    if len(parts) == 1:
        return "cli"
    if parts[1] == "cli_common":
        return "cli_common"
    return parts[1] if parts[1] in ALLOWED else "cli"


def _package_of(path: Path) -> str:
    """The dotted package a repository file belongs to (for relative imports)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] != "stethoedge":
        parts.insert(0, "stethoedge")
    return ".".join(parts[:-1])  # a/b/c.py and a/b/__init__.py both sit in package a.b


@dataclass(frozen=True)
class Import:
    """One imported module name and where it is."""

    module: str
    line: int
    in_function: bool
    type_checking: bool


class _Collector(ast.NodeVisitor):
    """Every import of a module, with whether it sits in a function or an ``if TYPE_CHECKING:`` block."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.found: list[Import] = []
        self._functions = 0
        self._type_checking = 0

    def _add(self, module: str, node: ast.AST) -> None:
        self.found.append(Import(module, node.lineno, self._functions > 0, self._type_checking > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        self._type_checking += guarded
        for child in node.body:
            self.visit(child)
        self._type_checking -= guarded
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        self._add(module, node)
        if module == "stethoedge":  # `from stethoedge import data` imports stethoedge.data
            for alias in node.names:
                self._add(f"stethoedge.{alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node.args[0].value, node)
        self.generic_visit(node)


def imports_of(source: str, package: str) -> list[Import]:
    """All imports in ``source`` (a module of ``package``)."""
    collector = _Collector(package)
    collector.visit(ast.parse(source))
    return collector.found


def violations(source: str, layer: str, package: str) -> list[str]:
    """The rule breaks of one module of ``layer``: each as ``line: message``."""
    out = []
    for imp in imports_of(source, package):
        target = layer_of_module(imp.module)
        if imp.module.split(".")[0] == "torch" and layer in TORCH_FREE:
            out.append(f"{imp.line}: {layer} imports torch")
        if target is None or target == layer:
            continue
        if target not in ALLOWED[layer]:
            out.append(f"{imp.line}: {layer} imports {imp.module} ({target})")
        elif layer == "cli" and target not in CLI_EAGER and not imp.in_function and not imp.type_checking:
            out.append(f"{imp.line}: the command line imports {imp.module} at load time (import it in the command)")
    if layer == "cli":
        out += [f"{imp.line}: the command line imports torch at load time" for imp in imports_of(source, package)
                if imp.module.split(".")[0] == "torch" and not imp.in_function and not imp.type_checking]
    return out


def _modules() -> list[Path]:
    files = []
    for folder in FOLDERS:
        files += [p for p in sorted((REPO / folder).rglob("*.py")) if "__pycache__" not in p.parts]
    return files


def test_every_module_keeps_to_the_layer_table():
    broken = []
    for path in _modules():
        layer = layer_of_file(path)
        for problem in violations(path.read_text(encoding="utf-8"), layer, _package_of(path)):
            broken.append(f"{path.relative_to(REPO)}:{problem}")
    assert not broken, "import rule broken (docs/ARCHITECTURE.md):\n" + "\n".join(broken)


def test_the_table_covers_the_tree():
    """Every module is assigned a layer and the torch-free data layer exists where setup.py maps it."""
    layers = {layer_of_file(p) for p in _modules()}
    assert layers == set(ALLOWED), layers ^ set(ALLOWED)
    assert (REPO / "stethoedge" / "data" / "icbhi.py").is_file()


@pytest.mark.parametrize("layer, source, expected", [
    ("runtime", "from stethoedge.train.icbhi import list_recordings\n", "runtime imports stethoedge.train.icbhi"),
    ("runtime", "def f():\n    import stethoedge.export.exporter\n", "runtime imports stethoedge.export.exporter"),
    ("data", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stethoedge.train import model\n",
     "data imports stethoedge.train"),
    ("data", "def f():\n    import torch\n", "data imports torch"),
    ("calibration", "from stethoedge import train\n", "calibration imports stethoedge.train"),
    ("runtime", "from ..train import icbhi\n", "runtime imports stethoedge.train"),
    ("firmware_bridge", "import importlib\nimportlib.import_module('stethoedge.cli_export')\n",
     "firmware_bridge imports stethoedge.cli_export"),
    ("cli", "from stethoedge.train.trainer import train\n", "the command line imports stethoedge.train.trainer at load"),
    ("cli", "import torch\n", "the command line imports torch at load time"),
])
def test_the_checker_catches_each_kind_of_break(layer: str, source: str, expected: str):
    package = {"cli": "stethoedge", "data": "stethoedge.data"}.get(layer, f"stethoedge.{layer}")
    found = violations(source, layer, package)
    assert any(expected in v for v in found), found


@pytest.mark.parametrize("layer, source", [
    ("cli", "def cmd():\n    from stethoedge.train.trainer import train\n"),
    ("export", "from stethoedge.calibration.window_set import WindowSet\nimport torch\n"),
    ("data", "from stethoedge.runtime.errors import DataError\nfrom stethoedge.data.metrics import evaluate\n"),
])
def test_the_checker_allows_what_the_table_allows(layer: str, source: str):
    package = {"cli": "stethoedge", "data": "stethoedge.data"}.get(layer, f"stethoedge.{layer}")
    assert violations(source, layer, package) == []
