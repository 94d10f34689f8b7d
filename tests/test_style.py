"""The style rules of DESIGN.md that can be checked on the source: no function over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import modernlm

ROOT = Path(modernlm.__file__).parent
MAX_FUNCTION_LINES = 60  # DESIGN.md, style rule 1


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from the `def` line to the last line inclusive) of every function in a file, methods
    and nested functions included (`Class.method`, `outer.inner`)."""
    found = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), "")
    return found


def test_function_lengths_are_counted_from_def_to_the_last_line(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "@decorator\n"
        "def outer():\n"
        "    def inner():\n"
        "        pass\n"
        "    return inner\n"
        "\n"
        "class C:\n"
        "    async def method(self):\n"
        "        pass\n"
    )
    assert function_lengths(source) == [("outer", 4), ("outer.inner", 2), ("C.method", 2)]


def test_no_function_is_longer_than_sixty_lines():
    long = [
        f"{path.relative_to(ROOT).as_posix()}:{name} ({n} lines)"
        for path in sorted(ROOT.rglob("*.py"))
        for name, n in function_lengths(path)
        if n > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into steps): " + ", ".join(long)
