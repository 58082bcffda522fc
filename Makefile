# Two quick-start commands: `make demo` (the pipeline on offline photos) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# GPU users: make TORCH_INDEX=https://download.pytorch.org/whl/cu126 demo
TORCH_INDEX ?=

.PHONY: demo docs-images test test-all bench venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	echo "torch==$(TORCH_VERSION)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -e '.[dev,eval]' --constraint $(VENV)/torch-constraint.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m dctdiff demo

# the README's pictures (docs/*.png, each under 150 KB) from a finished `make demo`
docs-images: venv
	$(PY) -m dctdiff.commands.docs_images --demo outputs/demo --output docs

test: venv
	$(PY) -m pytest -q

# the heavy system tests too (2-node clusters, ray job submit, an interrupted sweep, a killed worker, memory scaling)
test-all: venv
	$(PY) -m pytest -q -m "heavy or not heavy"

bench: venv
	$(PY) -m benchmarks.codec

clean:
	rm -rf outputs .pytest_cache
