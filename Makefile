# The two commands of the README. Both set up .venv themselves (CPU only).
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: test lint demo install clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml tools/install.sh
	bash tools/install.sh
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q -rs --durations=15 tests

demo: $(STAMP)
	$(PY) demo.py

clean:
	rm -rf .venv .cache demo_output
