# Set-up and the two everyday commands. `make demo` runs the embedded default; `make test` runs lint + tests.
# Each installs what it needs into .venv first (CPU torch pinned by constraints/cpu.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The whole recipe on the instruction world: world -> pretrain -> SFT -> comparisons -> RM -> PPO, PPO-ptx -> evaluate.
demo: install
	$(BIN)/lit-rlhf pipeline -c configs/pipeline/demo.yaml

lint: install
	$(BIN)/ruff check lit_rlhf tests benchmarks

# pytest exits 5 when it collects nothing: that is a failure here, not a pass.
# `make test` is the whole suite (what CI runs); `make test-fast` skips the tests marked slow, for the edit-test loop.
# Tests run on PYTEST_WORKERS processes (pytest-xdist; each test is single-threaded: tests/conftest.py), one per core
# of a 2-core CI machine; PYTEST_WORKERS=0 runs them in this process.
PYTEST_MARK ?=
PYTEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) $(if $(PYTEST_MARK),-m "$(PYTEST_MARK)"); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast:
	$(MAKE) test PYTEST_MARK="not slow"

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
