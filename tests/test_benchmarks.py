"""Every benchmark script still imports: they are run by hand on new hosts, so a moved helper (as `cpu_model`
once was) would otherwise be found only by the next person measuring."""

import importlib
import sys

import pytest

from .conftest import ROOT

BENCHMARKS = sorted(path.stem for path in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # they import each other (bench_dit, timing)
    module = importlib.import_module(name)
    if "__main__" in (ROOT / "benchmarks" / f"{name}.py").read_text():  # a script, not a shared helper
        assert callable(module.main), f"benchmarks/{name}.py has no main()"
    sys.modules.pop(name)
