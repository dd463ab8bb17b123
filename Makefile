# `make run` and `make test` each set up .venv first, so on a fresh machine with Python 3.11 they are all
# there is to do. The install is redone only when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install install-gpu run test lint browser postgres serve data data-check bench clean prefect mlflow-ui push

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import layert2v, torch, av, great_expectations, lightning, mlflow, diffusers, peft, transformers, prefect, onnx, onnxscript, onnxruntime" || (echo "install failed" && exit 1)
	touch $(STAMP)

install: $(STAMP)

# GPU machines: TensorRT and onnxruntime-gpu. The CPU onnxruntime goes first, since both wheels provide the
# `onnxruntime` module and the CUDA/TensorRT providers vanish when they are installed side by side.
install-gpu: install
	$(BIN)/python -m pip install --quiet -e '.[gpu]'
	$(BIN)/python -m pip uninstall --quiet -y onnxruntime
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps 'onnxruntime-gpu>=1.20'

# The main job: regenerate the default dataset if this clone has none, then the DVC pipeline.
run: install
	@[ -f data/vidlayer/dataset.json ] || $(MAKE) data
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: install lint browser postgres
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q --durations=10

# Debian's Chromium, which the UI tests drive with Playwright (no browser is ever downloaded), installed when missing.
browser:
	@command -v chromium > /dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null)

# Debian's PostgreSQL (installed and started when missing) for the MLflow server and job store of the serving tests.
postgres:
	@bash deploy/postgres.sh > /dev/null

# The layered-video service over the registry's champion (follows promotions), on loopback: docs/serving.md.
serve: install
	$(BIN)/layert2v serve --root $(CURDIR) --out $(CURDIR)/serve

lint: install
	$(BIN)/ruff check layert2v flows deploy tests benchmarks
	$(BIN)/ruff format --check layert2v flows deploy tests benchmarks

# The default synthetic dataset that data.dvc tracks; regenerating it reproduces the same hash, so
# `dvc add` leaves data.dvc unchanged (git diff is empty) and fills this clone's DVC cache.
data: install
	$(BIN)/layert2v data synth --out data/vidlayer
	$(BIN)/dvc add -q data

data-check: data
	$(BIN)/dvc status data.dvc

bench: install
	$(BIN)/python benchmarks/bench_data.py

# A local Prefect server (SQLite under .prefect/, loopback only) and every flow served as a deployment:
# open http://127.0.0.1:4200 -> Deployments, or `prefect deployment run pipeline/layert2v-pipeline`.
# One Ctrl-C (or a SIGTERM) stops the served flows first, then the server.
PREFECT_PORT ?= 4200
prefect: install
	mkdir -p .prefect
	PREFECT_HOME=$(CURDIR)/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false \
	  $(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > .prefect/server.log 2>&1 & \
	  server=$$!; trap 'kill $$server 2>/dev/null; wait $$server' EXIT INT TERM; \
	  until curl -sf http://127.0.0.1:$(PREFECT_PORT)/api/health > /dev/null; do sleep 1; done; \
	  echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (server log: .prefect/server.log)"; \
	  PATH="$(CURDIR)/$(BIN):$$PATH" PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
	  $(BIN)/python -m flows.deploy --repo $(CURDIR)

# The MLflow UI over the same store the pipeline writes (absolute SQLite path, local artifacts), on loopback with
# one worker (a 2-core machine). MLflow 3 may open in its GenAI view: choose "Model training" at the top left.
mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

# Push data and pipeline outputs to the DVC remote (`local` by default: ../layert2v-dvc-remote).
push: install
	$(BIN)/dvc push

clean:
	rm -rf artifacts .pytest_cache
