"""The package's own import graph, read from the source (every `import`, function-local ones included).

Two uses keep the repository honest:
- `cycles()`: modules that import each other, directly or around a loop. A loop hidden by a function-local
  import still couples the two modules; the test suite requires there are none.
- `closure(entry)`: every package file a command runs. `dvc.yaml` lists a stage's code deps from it, so that a
  change to any module a stage imports reruns that stage, and a change to anything else does not. Hand-kept
  lists drifted (stage 0 once named 7 of the 28 modules it ran).

`python -m layert2v.imports --check dvc.yaml` fails when a stage's code deps differ from its closure;
`--write` rewrites them (the stage's data deps and everything else are kept).
"""

from __future__ import annotations

import argparse
import ast
import sys
from functools import cache
from pathlib import Path

PACKAGE = "layert2v"
ROOT = Path(__file__).resolve().parent


def module_file(module: str) -> Path | None:
    """The source file of a package module (`layert2v.x.y` -> `x/y.py` or `x/y/__init__.py`)."""
    parts = module.split(".")[1:]
    for path in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGE, *relative.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imports_of(module: str) -> frozenset[str]:
    """Package modules `module` imports anywhere in its file (`from a import b` counts `a.b` when b is a module)."""
    path = module_file(module)
    if path is None:
        return frozenset()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE) and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return frozenset(m for m in found if module_file(m) is not None and m != module)


def all_modules() -> list[str]:
    return sorted(_module_name(p) for p in ROOT.rglob("*.py"))


def closure(entries: list[str]) -> set[str]:
    """`entries` and every package module they import, transitively (package `__init__` files included)."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo += [*imports_of(module), *parents]
    return seen


def cycles() -> list[list[str]]:
    """Import loops among the package's modules, each as the path around it (first module repeated at the end)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(path: list[str]) -> None:
        for other in sorted(imports_of(path[-1])):
            if other in path:
                found.append([*path[path.index(other) :], other])
            elif other not in done:
                visit([*path, other])
        done.add(path[-1])

    for module in all_modules():
        if module not in done:
            visit([module])
    return found


def code_deps(entries: list[str], repo: Path) -> list[str]:
    """The repository-relative files of `closure(entries)`, sorted: what a DVC stage lists as its code deps."""
    files = {module_file(m) for m in closure(entries)}
    return sorted(str(f.relative_to(repo)) for f in files if f is not None)


def main(argv: list[str] | None = None) -> int:
    from layert2v.pipeline_stages import check_dvc_yaml, write_dvc_yaml

    parser = argparse.ArgumentParser(prog="python -m layert2v.imports", description=__doc__.splitlines()[0])
    parser.add_argument("dvc_yaml", type=Path, nargs="?", default=Path("dvc.yaml"))
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 when a stage's code deps differ")
    action.add_argument("--write", action="store_true", help="rewrite every stage's code deps")
    args = parser.parse_args(argv)
    if args.write:
        write_dvc_yaml(args.dvc_yaml)
        return 0
    problems = check_dvc_yaml(args.dvc_yaml)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
