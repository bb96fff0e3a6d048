"""Module sizes and the longest functions of a source tree (issue 14's before/after table).

    python scripts/code_size.py src/pcam [--most 10] [--rev REV]

``--rev`` reads the files as they were at a git revision (``git show REV:path``), so
one command prints the before and the after of a change.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path


def _sources(root: str, rev: str | None) -> dict[str, str]:
    if rev is None:
        return {str(p): p.read_text() for p in sorted(Path(root).rglob("*.py"))}
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, root], capture_output=True, text=True, check=True
    ).stdout.split()
    return {
        n: subprocess.run(["git", "show", f"{rev}:{n}"], capture_output=True, text=True, check=True).stdout
        for n in names
        if n.endswith(".py")
    }


def _functions(path: str, text: str) -> list[tuple[int, str]]:
    """(lines, qualified name) of every function and method, decorators excluded."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append((child.end_lineno - child.lineno + 1, f"{path}:{name}"))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(text), "")
    return found


def main() -> None:
    """Print the ``--most`` largest modules and longest functions under the given roots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+")
    parser.add_argument("--most", type=int, default=10)
    parser.add_argument("--rev", help="a git revision (default: the working tree)")
    args = parser.parse_args()
    sources = {k: v for root in args.roots for k, v in _sources(root, args.rev).items()}
    modules = sorted(((len(t.splitlines()), p) for p, t in sources.items()), reverse=True)
    functions = sorted((f for p, t in sources.items() for f in _functions(p, t)), reverse=True)
    total = sum(n for n, _ in modules)
    print(f"{len(modules)} modules, {total} lines; {len(functions)} functions")
    print("largest modules:")
    for n, p in modules[: args.most]:
        print(f"  {n:5d}  {p}")
    print("longest functions:")
    for n, p in functions[: args.most]:
        print(f"  {n:5d}  {p}")


if __name__ == "__main__":
    main()
