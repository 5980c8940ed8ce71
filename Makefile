# The two commands of the README. Both set up .venv themselves (CPU only).
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: test demo install clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt tools/install.sh
	bash tools/install.sh
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -rs tests

demo: $(STAMP)
	$(PY) demo.py

clean:
	rm -rf .venv .cache demo_output
