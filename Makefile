# `make run` and `make test` each set up .venv first, so on a fresh machine with Python 3.11 they are all
# there is to do. The install is redone only when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint data data-check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import layert2v, torch, av, great_expectations, lightning, mlflow, diffusers, peft, transformers, prefect" || (echo "install failed" && exit 1)
	touch $(STAMP)

install: $(STAMP)

# The main job: regenerate the default dataset if this clone has none, then the DVC pipeline.
run: install
	@[ -f data/vidlayer/dataset.json ] || $(MAKE) data
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: install lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q

lint: install
	$(BIN)/ruff check layert2v tests benchmarks
	$(BIN)/ruff format --check layert2v tests benchmarks

# The default synthetic dataset that data.dvc tracks; regenerating it reproduces the same hash, so
# `dvc add` leaves data.dvc unchanged (git diff is empty) and fills this clone's DVC cache.
data: install
	$(BIN)/layert2v data synth --out data/vidlayer
	$(BIN)/dvc add -q data

data-check: data
	$(BIN)/dvc status data.dvc

bench: install
	$(BIN)/python benchmarks/bench_data.py

clean:
	rm -rf artifacts .pytest_cache
