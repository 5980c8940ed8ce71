# The two commands of the README. Both set up .venv themselves (CPU only), torch from PyTorch's CPU index:
# `make test TORCH_INDEX_URL=<a mirror of https://download.pytorch.org/whl/cpu>` (after `make clean`) to change it.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: test test-fast lint demo install clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml tools/install.sh
	bash tools/install.sh
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

# The whole suite (CI runs this), then the total time and the 15 slowest tests.
test: lint
	$(PY) -m pytest -q -rs --durations=15 tests

# The loop while editing: every test but those slow by nature (markers in pytest.ini), under 3 minutes on 2 cores.
FAST_TIER := not e2e and not vllm and not multiprocess and not server and not real_model
test-fast: lint
	$(PY) -m pytest -q -rs --durations=15 -m "$(FAST_TIER)" tests

demo: $(STAMP)
	$(PY) demo.py

clean:
	rm -rf .venv .cache demo_output
