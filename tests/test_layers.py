"""The layers, read from the import statements of the source (parsed with `ast`; nothing is imported).

    core        agff_deploy/ without agff_deploy/eval: model, preprocessing, manifest, errors
    runtime     runtime/: torch-free inference on top of the core
    evaluation  agff_deploy/eval/: benchmarks, measured through the runtime
    serve       serve/: the runtime behind Triton Inference Server (torch-free too)
    export, train, bench: above all of these

An import inside a function runs only when the function does ("lazy"); one under
`if TYPE_CHECKING:` never runs and is not counted.
"""

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agff_deploy", "runtime", "serve", "export", "train", "bench")
TORCH = ("torch", "transformers", "accelerate", "peft")
TORCH_BACKEND = "runtime.torch_runner"
CHECKPOINT_LOADER = "runtime.loading"  # Embedder.load on a checkpoint folder builds the torch backend


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # absolute: relative imports resolved, `from package import module` as package.module
    lazy: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def layer(module: str) -> str:
    if module == "agff_deploy.eval" or module.startswith("agff_deploy.eval."):
        return "evaluation"
    if module.split(".")[0] == "agff_deploy":
        return "core"
    return module.split(".")[0]


def is_torch(target: str) -> bool:
    return target.split(".")[0] in TORCH


class ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[Import] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        type_checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        for child in node.orelse if type_checking else [test, *node.body, *node.orelse]:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parent = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            base = ".".join([*parent, *([node.module] if node.module else [])])
        for alias in node.names:
            self.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base)

    def add(self, target: str) -> None:
        self.found.append(Import(self.module, target, lazy=self.depth > 0))


@cache
def imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for module, path in modules().items():
        collector = ImportCollector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), str(path)))
        found += collector.found
    return tuple(found)


def internal(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def crossings(importer_layer: str, forbidden: set[str]) -> list[str]:
    return [
        f"{i.importer} imports {i.target}"
        for i in imports()
        if layer(i.importer) == importer_layer and internal(i.target) and layer(i.target) in forbidden
    ]


@cache
def needs_torch() -> frozenset[str]:
    """Modules whose import, run at module level, imports torch (directly or through other modules)."""
    eager = [i for i in imports() if not i.lazy]
    found = {i.importer for i in eager if is_torch(i.target)}
    while True:
        more = {i.importer for i in eager if i.target in found} - found
        if not more:
            return frozenset(found)
        found |= more


def test_the_core_imports_neither_runtime_serve_export_train_nor_bench():
    assert crossings("core", {"runtime", "serve", "export", "train", "bench"}) == []


def test_nothing_in_the_core_imports_evaluation():
    assert crossings("core", {"evaluation"}) == []


def test_the_runtime_imports_neither_serve_export_train_bench_nor_evaluation():
    assert crossings("runtime", {"serve", "export", "train", "bench", "evaluation"}) == []


def test_serving_imports_neither_export_train_bench_nor_evaluation():
    assert crossings("serve", {"export", "train", "bench", "evaluation"}) == []


def test_importing_any_serving_module_never_imports_torch():
    assert sorted(m for m in needs_torch() if layer(m) == "serve") == []


def test_evaluation_imports_only_the_core_and_the_runtime():
    assert crossings("evaluation", {"export", "train", "bench"}) == []


def test_importing_any_runtime_module_never_imports_torch():
    assert sorted(m for m in needs_torch() if layer(m) == "runtime") == []


def test_the_runtime_imports_torch_only_lazily_in_its_torch_backend_and_checkpoint_loader():
    torch_imports = [
        i for i in imports() if layer(i.importer) == "runtime" and (is_torch(i.target) or i.target in needs_torch())
    ]
    assert torch_imports, "the torch backend imports torch"
    assert [
        f"{i.importer} imports {i.target}{' lazily' if i.lazy else ''}"
        for i in torch_imports
        if not (i.lazy and i.importer in (TORCH_BACKEND, CHECKPOINT_LOADER))
    ] == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_cycles_finds_modules_that_import_each_other_and_nothing_else():
    edges = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": set()}
    assert cycles(edges) == [["a", "b"]]


def test_no_modules_import_each_other_even_lazily():
    edges: dict[str, set[str]] = {}
    for i in imports():
        if i.target in modules() and i.target != i.importer:
            edges.setdefault(i.importer, set()).add(i.target)
    assert [" <-> ".join(cycle) for cycle in cycles(edges)] == []
