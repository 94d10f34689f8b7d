"""The floors of DESIGN.md, checked on the source: imports run one way (files/fields/text -> config -> layers -> the
model and its members -> everything that uses them -> cli) and never in a circle.

The import graph is read from every module's AST: top-level imports, function-local ones (which would otherwise hide
a circle) and those under `if TYPE_CHECKING:` all count. Relative imports are resolved against the importing module's
package; `from . import x` imports the module x when there is one, else its package's __init__. Nothing is imported
(the package is only located), so the check is fast and needs no torch.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections import defaultdict
from pathlib import Path

ROOT = Path(importlib.util.find_spec("modernlm").submodule_search_locations[0])

# Each top-level module or package of modernlm on its floor, lowest first. A module imports only from floors below
# its own. Two names share a floor only when neither imports the other, and an import between them fails as well.
FLOORS = [
    {"files", "fields", "text", "threads"},
    {"config"},
    {"layers"},
    {"model"},
    {"encoder"},  # the members, assembled from the model's blocks
    {"seq2seq", "vit", "embedding"},
    {"vlm"},  # a ViT tower, the projector and the decoder
    {"tokenizer_spm"},  # a GGUF file's SentencePiece vocabulary as a `tokenizers` BPE
    {"tokenizer"},
    {"checkpoints"},
    {"quant"},
    {"loading"},
    {"generation"},
    {"analysis"},
    {"inspect"},  # activations by name, interventions, the logit lens (the lab and the CLI use it)
    {"export"},  # GGUF out: dequantizes quant's layers, inverts checkpoints' GGUF names
    {"eval"},
    {"serving"},
    {"training"},
    {"finetune"},
    {"alignment"},
    {"lab"},
    {"distributed"},  # fills in the trainer's hooks (training/parallel.py)
    {"cli"},
    {"__init__"},  # the public API: re-exports config, loading, model, quant, generation
    {"__main__"},
]


def floor_of(top: str) -> int | None:
    return next((i for i, names in enumerate(FLOORS) if top in names), None)


def top_of(module: str) -> str:
    return module.split(".")[0]


def module_name(root: Path, path: Path) -> str:
    """The dotted name under the package: "quant.load", "quant" for quant/__init__.py, "__init__" for the root's."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def _imported(node: ast.AST, package: list[str], modules: set[str]) -> list[str]:
    """The modules of the package one import statement imports (a name not a module: the module that defines it)."""

    def known(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or "__init__"

    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name == "modernlm" or a.name.startswith("modernlm.")]
        return [known(name.removeprefix("modernlm").removeprefix(".")) for name in names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        if node.level - 1 > len(package):
            return []
        base = package[: len(package) - (node.level - 1)]
        full = ".".join([*base, *(node.module.split(".") if node.module else [])])
    elif node.module == "modernlm" or (node.module or "").startswith("modernlm."):
        full = node.module.removeprefix("modernlm").removeprefix(".")
    else:
        return []
    named = [f"{full}.{a.name}".lstrip(".") for a in node.names]  # `from . import x`: the module x, if it is one
    return [name if name in modules else known(full) for name in named]


@functools.cache
def import_graph(root: Path = ROOT) -> dict[str, dict[str, list[int]]]:
    """{module: {module it imports: [line numbers]}} over every .py file under `root`, imports anywhere counted."""
    paths = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, list[int]]] = {}
    for name, path in paths.items():
        package = [] if name == "__init__" else name.split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        edges = defaultdict(list)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, package, set(paths)):
                if target != name and node.lineno not in edges[target]:
                    edges[target].append(node.lineno)
        graph[name] = dict(edges)
    return graph


def circles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected groups of more than one module: each module of a group reaches every other one."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    groups = {frozenset(m for m in reach[a] if a in reach.get(m, ())) | {a} for a in graph if a in reach[a]}
    return sorted(sorted(g) for g in groups)


def _edge(graph, a: str, b: str) -> str:
    return f"{a} -> {b} (line {', '.join(map(str, graph[a][b]))})"


def test_every_module_has_a_floor():
    tops = {top_of(m) for m in import_graph()}
    assert {t for t in tops if floor_of(t) is None} == set(), "add new modules to FLOORS (and DESIGN.md)"
    named = [t for floor in FLOORS for t in floor]
    assert sorted(t for t in set(named) if named.count(t) > 1) == [], "a name on two floors"
    assert set(named) - tops == set(), "FLOORS names a module that is gone"


def test_the_graph_counts_local_and_type_checking_imports(tmp_path):
    """The reader itself: a circle through a function-local import, one under TYPE_CHECKING, `from . import x`."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n")
    (pkg / "d.py").write_text("import modernlm.c\nfrom .. import x\n")
    graph = import_graph(pkg)
    assert graph["__init__"] == {"a": [1]} and graph["a"] == {"sub.b": [1]} and graph["sub.b"] == {"a": [2]}
    assert graph["c"] == {"d": [3]} and graph["d"] == {"c": [1]}  # `from .. import x` leaves the package: no edge
    assert circles(graph) == [["a", "sub.b"], ["c", "d"]]


def test_no_import_circles():
    graph = import_graph()
    found = [
        " <-> ".join(group) + ": " + "; ".join(_edge(graph, a, b) for a in group for b in group if b in graph[a])
        for group in circles(graph)
    ]
    assert found == [], "modules that import one another (move the shared piece down):\n" + "\n".join(found)


def test_no_module_imports_from_its_floor_or_above():
    graph = import_graph()
    violations = []
    for module, targets in sorted(graph.items()):
        own, mine = top_of(module), floor_of(top_of(module))
        for target in sorted(targets):
            theirs = floor_of(top_of(target))
            if top_of(target) == own or mine is None or theirs is None or theirs < mine:
                continue
            where = "the same floor as" if theirs == mine else "a higher floor than"
            violations.append(f"{_edge(graph, module, target)}: {top_of(target)} is on {where} {own}")
    assert violations == [], "imports that run upward (or sideways on one floor):\n" + "\n".join(violations)
