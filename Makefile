# Quick-start commands: `make demo` (the pipeline on offline photos), `make test` and `make study`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# GPU users: make TORCH_INDEX=https://download.pytorch.org/whl/cu126 demo
TORCH_INDEX ?=

# `make study`: the paper's DCT vs pixel comparison at CPU size on Fashion-MNIST (README "Studies");
# `make study STUDY=ebfr` (or snr_scale, keep) runs another built-in study at the same size.
STUDY ?= dct_vs_pixel
STUDY_DIR ?= outputs/study
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
# the fmnist preset on the full training split, FID/KID of 1000 samples against 2000 test images (held out)
STUDY_STEPS ?= 1200
STUDY_REPORT_EVERY ?= 600
STUDY_FID_SAMPLES ?= 1000
STUDY_REFERENCE_IMAGES ?= 2000
STUDY_NFE ?= 25
STUDY_ARGS ?=

# `make gpu-wheels`: what benchmarks/gpu.py needs besides PyTorch, for a GPU machine's Python (README "Performance")
GPU_WHEELS ?= .gpu-wheels
GPU_PYTHON_VERSION ?= 3.12

.PHONY: demo docs-images docs-study-images test test-all lint bench venv clean study fashion-mnist gpu-wheels

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

# docs/study_curves.png and docs/study_grids.png from the newest `make study` of $(STUDY)
docs-study-images: venv
	$(PY) -m dctdiff.commands.docs_images --study "$(lastword $(sort $(wildcard $(STUDY_DIR)/sweeps/$(STUDY)-*)))" --output docs

fashion-mnist:
	@test -d $(FASHION_MNIST) || { echo "make study needs Fashion-MNIST in $(FASHION_MNIST): apt-get install dataset-fashion-mnist" >&2; exit 1; }

study: fashion-mnist venv
	$(PY) -m dctdiff prepare --source fashion-mnist:$(FASHION_MNIST) --output $(STUDY_DIR)/data \
		--preset fmnist --store-pixels --no-progress
	$(PY) -m dctdiff prepare --source fashion-mnist:$(FASHION_MNIST) --output $(STUDY_DIR)/test \
		--preset fmnist --split test --limit $(STUDY_REFERENCE_IMAGES) --no-progress
	$(PY) -m dctdiff sweep --study $(STUDY) --scheduler grid --preset fmnist --data $(STUDY_DIR)/data \
		--fid-reference $(STUDY_DIR)/test --storage $(STUDY_DIR)/sweeps \
		--mlflow-uri sqlite:///$(abspath $(STUDY_DIR))/mlflow.db --max-steps $(STUDY_STEPS) \
		--report-every $(STUDY_REPORT_EVERY) --fid-samples $(STUDY_FID_SAMPLES) --nfe $(STUDY_NFE) $(STUDY_ARGS)

test: venv
	$(PY) -m pytest -q

# ruff: lint (pyflakes, pycodestyle, import order) and format, configured in pyproject.toml; CI runs it
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the heavy system tests too (2-node clusters, ray job submit, an interrupted sweep, a killed worker, memory scaling)
test-all: venv
	$(PY) -m pytest -q -m "heavy or not heavy"

bench: venv
	$(PY) -m benchmarks.codec

gpu-wheels: venv
	$(PY) -m pip download --quiet --only-binary=:all: --no-deps --dest $(GPU_WHEELS) \
		--python-version $(GPU_PYTHON_VERSION) --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		numpy pyyaml safetensors tqdm
	du -sh $(GPU_WHEELS)

clean:
	rm -rf outputs .pytest_cache
