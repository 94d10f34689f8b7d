"""The floors of DESIGN.md, checked on the source: a module never imports one from a higher floor (data flows one
way: files/fields/text -> config -> layers -> the model and its members -> everything that uses them -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import modernlm

ROOT = Path(modernlm.__file__).parent
FLOORS = [  # lowest first; a top-level module or package of modernlm belongs to one floor
    {"files", "fields", "text", "threads"},
    {"config"},
    {"layers"},
    {"model", "encoder", "seq2seq", "vit", "embedding", "tokenizer"},
    {
        "checkpoints",
        "loading",
        "generation",
        "quant",
        "training",
        "finetune",
        "eval",
        "serving",
        "analysis",
        "lab",
        "alignment",
    },
    {"distributed"},  # fills in the trainer's hooks (training/parallel.py)
    {"cli", "__main__", "__init__"},
]


def floor_of(top: str) -> int | None:
    return next((i for i, names in enumerate(FLOORS) if top in names), None)


def imported_tops(path: Path) -> set[str]:
    """The top-level modernlm modules a file imports (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).parent.parts
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            parts = (*base, *(node.module.split(".") if node.module else ()))
            if parts:
                tops.add(parts[0])
            else:  # `from . import x` at the top: x is the module
                tops.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modernlm."):
            tops.add(node.module.split(".")[1])
    return tops


def test_every_module_has_a_floor():
    tops = {
        p.stem if p.is_file() else p.name for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert {t for t in tops if floor_of(t) is None} == set(), "add new modules to FLOORS (and DESIGN.md)"


def test_no_module_imports_from_a_higher_floor():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        own = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for top in imported_tops(path):
            if floor_of(top) is not None and floor_of(top) > floor_of(own):
                violations.append(f"{path.relative_to(ROOT)} imports {top}")
    assert violations == []
