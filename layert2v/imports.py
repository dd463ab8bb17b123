"""The package's own import graph, read from the source (every `import`, function-local ones included).

Two uses keep the repository honest:
- `cycles()`: modules that import each other, directly or around a loop. A loop hidden by a function-local
  import still couples the two modules; the test suite requires there are none.
- `closure(entry)`: every package file a command runs. `dvc.yaml` lists a stage's code deps from it, so that a
  change to any module a stage imports reruns that stage, and a change to anything else does not. Hand-kept
  lists drifted (stage 0 once named 7 of the 28 modules it ran).

`python -m layert2v.imports dvc.yaml` fails when a stage's code deps differ from its closure and prints the
list it should hold; `--write` rewrites them in place; `--cycles` lists import loops.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from functools import cache
from pathlib import Path

PACKAGE = "layert2v"
ROOT = Path(__file__).resolve().parent
RUN = "layert2v.training.run"  # runs every training stage through its table; a stage depends on its own file only
TRAINING = {
    "stage0_vae": "layert2v.training.stage0_vae",
    "stage1_alpha": "layert2v.training.stage1_alpha",
    "stage2_joint": "layert2v.training.stage2_joint",
    "stage3_multifg": "layert2v.training.stage3_multifg",
}
# DVC stage -> the modules its `layert2v` command runs. `cli.py` is a thin shell and no stage's dep: it imports
# every command's code lazily, so depending on it would rerun every stage on any change.
STAGE_ENTRIES: dict[str, list[str]] = {
    "prepare": ["layert2v.data.prepare"],
    "validate": ["layert2v.quality.data_gate", "layert2v.quality.report"],
    **{name: [RUN, module] for name, module in TRAINING.items()},
    "encode": ["layert2v.training.encode", "layert2v.models.checkpoint"],
    "stage2_gate": ["layert2v.quality.sample_gate"],
    "stage3_gate": ["layert2v.quality.sample_gate"],
    "export": ["layert2v.export.onnx"],
    "evaluate": ["layert2v.evaluate"],
    "register": ["layert2v.registry", "layert2v.serving.pyfunc_entry"],  # the entry is logged as a file, not imported
    "promote": ["layert2v.registry"],
}


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


def closure(entries: list[str], skip: dict[str, set[str]] | None = None) -> set[str]:
    """`entries` and every package module they import, transitively (package `__init__` files included);
    `skip[a]` are imports of `a` not followed (the training table's other stages)."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo += [*(imports_of(module) - (skip or {}).get(module, set())), *parents]
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


def code_deps(stage: str) -> list[str]:
    """The repository-relative files a DVC stage's command runs, sorted: the stage's code deps."""
    other_stages = set(TRAINING.values()) - set(STAGE_ENTRIES[stage])
    files = {module_file(m) for m in closure(STAGE_ENTRIES[stage], {RUN: other_stages})}
    return sorted(str(f.relative_to(ROOT.parent)) for f in files if f is not None)


def check_dvc_yaml(path: Path) -> list[str]:
    """What differs between each stage's `layert2v/` deps in `path` and its closure (empty: they agree)."""
    import yaml

    stages = yaml.safe_load(path.read_text())["stages"]
    problems = [
        f"{name}: no entry in layert2v/imports.py STAGE_ENTRIES" for name in stages if name not in STAGE_ENTRIES
    ]
    for name in STAGE_ENTRIES:
        listed = {d for d in stages.get(name, {}).get("deps", []) if isinstance(d, str) and d.startswith(PACKAGE)}
        expected = set(code_deps(name))
        if listed != expected:
            problems.append(
                f"{name}: missing {sorted(expected - listed)}, not run {sorted(listed - expected)}; "
                f"its code deps are:\n      - " + "\n      - ".join(sorted(expected))
            )
    return problems


def write_dvc_yaml(path: Path) -> None:
    """Replace each stage's `- layert2v/...` dep lines in `path` by its closure; comments, anchors and every
    other line stay as they are (the file is edited as text, not re-dumped)."""
    lines, out, stage = path.read_text().splitlines(), [], None
    index = 0
    while index < len(lines):
        line = lines[index]
        match = re.match(r"^  ([a-z0-9_]+):\s*(#.*)?$", line)
        stage = match.group(1) if match else stage
        if stage in STAGE_ENTRIES and line.startswith(f"      - {PACKAGE}/"):
            while index < len(lines) and lines[index].startswith(f"      - {PACKAGE}/"):
                index += 1
            out += [f"      - {dep}" for dep in code_deps(stage)]
            continue
        out.append(line)
        index += 1
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layert2v.imports", description=__doc__.splitlines()[0])
    parser.add_argument("dvc_yaml", type=Path, nargs="?", default=Path("dvc.yaml"))
    parser.add_argument("--cycles", action="store_true", help="list import loops instead")
    parser.add_argument("--write", action="store_true", help="rewrite the stages' code deps, then check")
    args = parser.parse_args(argv)
    if args.write:
        write_dvc_yaml(args.dvc_yaml)
    problems = [" -> ".join(c) for c in cycles()] if args.cycles else check_dvc_yaml(args.dvc_yaml)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
