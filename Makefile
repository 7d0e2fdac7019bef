# The lab's two commands (see README.md). Each one creates or updates .venv by itself.
#   make lab    set everything up and open JupyterLab on 127.0.0.1 in notebooks/
#   make test   set everything up and run the whole suite in fast mode (pytest + nbval)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch the lab is tested with (the local CPU wheel on lab machines); on a CUDA machine use
# e.g. TORCH='torch>=2.4,<2.15'. Where PyPI has no wheel of it (macOS 13), the newest in range.
TORCH ?= torch==2.13.0
TORCH_RANGE := torch>=2.4,<2.15
STAMP := $(VENV)/.labkit-installed
CELL_TIMEOUT ?= 300
PYTEST_ARGS ?=
LAB_PORT ?= 8888
# Jupyter refuses to run as root (a container, a cloud VM) without --allow-root: pass it only then.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
# The README's lab command; tests/test_make_lab.py starts `make lab` and opens the URL it prints.
LAB_CMD = $(VENV)/bin/jupyter lab --ip=127.0.0.1 --port=$(LAB_PORT) --no-browser $(ALLOW_ROOT) --ServerApp.root_dir=notebooks
# The whole student edition (`make student-test` executes it): written fresh by each run, git-ignored (.cache/).
STUDENT_DIR ?= .cache/student-edition

.PHONY: lab test venv triton bench student student-test clean-services help gpu-wheels gpu-wheels-lock
help:
	@echo "make lab   - set up and open JupyterLab (127.0.0.1:$(LAB_PORT); prints the URL with its token)"
	@echo "make test  - set up and run every test and notebook in fast mode"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)" 2>/dev/null \
		|| $(PY) -m pip install -q "$(TORCH_RANGE)" || { echo "PyPI has no $(TORCH_RANGE) wheel for this platform" \
		"(Intel Macs: the last is torch 2.2.2); README.md, 'Platforms', says what to do."; exit 1; }
	$(PY) -m pip install -q -e '.[serve,test]'
	# the TF Serving protos depend on full tensorflow; we use tensorflow-cpu, hence --no-deps
	$(PY) -m pip install -q --no-deps 'tensorflow-serving-api>=2.16'
	@touch $(STAMP)

# NVIDIA Triton (notebook 12) in its own venv: the nvidia-pytriton wheel bundles the real
# tritonserver but pins numpy < 2, so it cannot share .venv (numpy 2). labkit.services.triton runs
# the server with $(TRITON_VENV)/bin/python. Wheels exist for Linux x86_64 only; elsewhere
# notebook 12 says so in one line (labkit.needs).
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.labkit-installed
PYTRITON ?= nvidia-pytriton==0.7.0
triton: $(TRITON_STAMP)

$(TRITON_STAMP):
	@if [ "$$(uname -s)-$$(uname -m)" = Linux-x86_64 ]; then \
		{ test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV); } && \
		$(TRITON_VENV)/bin/python -m pip install -q --disable-pip-version-check "$(PYTRITON)" "numpy<2" "$(TORCH)" 2>/dev/null \
		|| $(TRITON_VENV)/bin/python -m pip install -q --disable-pip-version-check "$(PYTRITON)" "numpy<2" "$(TORCH_RANGE)" || exit 1; \
	else mkdir -p $(TRITON_VENV); echo "NVIDIA Triton: no nvidia-pytriton wheel for $$(uname -s) $$(uname -m); notebook 12 will say so"; fi
	@touch $(TRITON_STAMP)

# Set up once (the stamp makes the second run start at once), then open the lab. Jupyter prints
# the URL with its login token (http://127.0.0.1:PORT/lab?token=...); a busy port gets the next one.
lab: $(STAMP) triton
	@echo "Starting JupyterLab in notebooks/ on 127.0.0.1 (Ctrl-C to stop): open the http://127.0.0.1:...?token=... URL it prints."
	$(LAB_CMD)

# The suite: unit and service tests, then every notebook executed once as `labkit student --paired`
# writes it: the lesson (the same cells in both editions: tests/test_exercises.py proves it), then
# its exercises as the student edition has them (unsolved checks must say "not done yet", never
# crash), then the same exercises solved (every check must pass). So each lesson runs once, not
# twice. Whole student notebooks run in tests too: 00 in tests/test_student_edition.py (unsolved,
# then solved), 06 and 14 in tests/test_degraded.py (non-strict, with RabbitMQ, Java and the system
# Redis hidden: the newcomer's path). The 25 slowest steps are listed at the end, to keep the suite
# inside its time budget.
PAIRED_DIR ?= .cache/paired-edition
test: $(STAMP) triton
	rm -rf "$(PAIRED_DIR)" && $(VENV)/bin/labkit student --paired "$(PAIRED_DIR)" > /dev/null
	LABKIT_FAST=1 $(PY) -m pytest tests "$(PAIRED_DIR)" --nbval-lax --nbval-current-env --durations=25 \
		--nbval-cell-timeout=$(CELL_TIMEOUT) -p no:randomly $(PYTEST_ARGS)

bench: $(STAMP) triton
	$(VENV)/bin/labkit bench all --fast

student: $(STAMP)
	$(VENV)/bin/labkit student student-edition

# The student edition of every notebook, top to bottom (unsolved exercises must say "not done yet").
student-test: $(STAMP) triton
	rm -rf "$(STUDENT_DIR)" && $(VENV)/bin/labkit student "$(STUDENT_DIR)" > /dev/null
	LABKIT_FAST=1 $(PY) -m pytest "$(STUDENT_DIR)" --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=$(CELL_TIMEOUT) -p no:randomly $(PYTEST_ARGS)

clean-services: $(STAMP)
	$(VENV)/bin/labkit services --stop-all

# The extra wheels `labkit gpu-check` uses on a GPU machine without Jupyter (CPython 3.12, manylinux
# x86_64), downloaded into $(GPU_WHEELS) (git-ignored) to travel with the checkout; README, "Running on a GPU".
GPU_WHEELS ?= .gpu-wheels
GPU_WHEELS_MAX_MB ?= 40
GPU_PLATFORMS := $(foreach p,manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))
gpu-wheels:
	rm -rf "$(GPU_WHEELS)" && mkdir -p "$(GPU_WHEELS)"
	$(PYTHON) -m labkit.gpu_check --needs > "$(GPU_WHEELS)/requirements.txt"
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d "$(GPU_WHEELS)" -r "$(GPU_WHEELS)/requirements.txt"
	@n=$$(ls "$(GPU_WHEELS)"/*.whl | wc -l); want=$$(wc -l < "$(GPU_WHEELS)/requirements.txt"); \
	 mb=$$(du -cm "$(GPU_WHEELS)"/*.whl | tail -1 | cut -f1); \
	 echo "$$n wheels ($$want pinned), $$mb MB in $(GPU_WHEELS)/"; \
	 test "$$n" -eq "$$want" || { echo "expected $$want wheels"; exit 1; }; \
	 test "$$mb" -le "$(GPU_WHEELS_MAX_MB)" || { echo "over $(GPU_WHEELS_MAX_MB) MB"; exit 1; }

# Re-resolve the closure of gpu-check's wheels with pip (a dry run) and print it as labkit.gpu_check.wheels.WHEELS.
gpu-wheels-lock:
	$(PYTHON) -m labkit.gpu_check.wheels
