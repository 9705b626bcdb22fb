# The two commands of the course: `make lab` and `make test`. Everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed
# Which torch build `make setup` installs: auto (the CPU build on Linux without an NVIDIA GPU),
# cpu, or default (the package index's build); see tools/install_torch.py.
TORCH_BUILD ?= auto
# `make setup OFFLINE=FOLDER` installs from a folder that `make offline-bundle` filled, with no
# network (see README, "No network in the room").
OFFLINE ?=
PIP_OFFLINE := $(if $(OFFLINE),--no-index --find-links $(abspath $(OFFLINE))/wheels,)
KERNEL := tfx-course
NBGRADER_SERVER := formgrader validate_assignment assignment_list course_list
# The JupyterLab plugin that asks "get notified about official Jupyter news?" at first start.
NEWS_PLUGIN := @jupyterlab/apputils-extension:announcements
LAB_QUIET := $(VENV)/.lab-quiet
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
PIP_NOISE := ^WARNING: Location .* is ignored
# Progress bars: draw only the first and last state, so stored notebook outputs are stable.
export TQDM_MININTERVAL := 1000
export PYTHONHASHSEED := 0
export MPLBACKEND := module://matplotlib_inline.backend_inline
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXERCISES := $(sort $(wildcard exercises/[0-9][0-9]_*.ipynb))
# The website: Sphinx with MyST-NB (the `book` extra) and a local MathJax from npm (book/).
BOOK_STAMP := $(VENV)/.book-installed
MATHJAX_STAMP := book/node_modules/.installed
BOOK_OUT := build/book

.PHONY: setup lab test lint unit nbval nbval-other-cpu grade notebooks book test-book lock check-lock clean help \
	offline-bundle offline-install offline-folder

help:
	@echo "make lab        set up .venv and open the course in JupyterLab"
	@echo "make test       set up .venv and run every check (lint, unit tests, notebooks, exercises)"
	@echo "make notebooks  re-run every lesson and store its outputs"
	@echo "make book       build the course website (build/book/html) from the stored outputs"
	@echo "make test-book  build the website and open every page in headless Chromium"

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned, and on Linux without an NVIDIA GPU the CPU build (PyTorch's CPU
	@# index, else the default one): PyPI's Linux wheel pulls several GB of CUDA libraries.
	set -o pipefail; $(BIN)/python tools/install_torch.py --build $(TORCH_BUILD) $(PIP_OFFLINE) 2>&1 \
		| { grep -v "$(PIP_NOISE)" || true; }
	set -o pipefail; $(PIP) -e ".[dev,deploy]" -c $(LOCK) $(PIP_OFFLINE) 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@# torchao names its GPU-only kernels it cannot load on a CPU machine: show that only on failure.
	@$(BIN)/python -c "import torch, tfx_course, nbval, jupyterlab, torchao, executorch, onnxruntime" \
		> $(VENV)/import-check.log 2>&1 || { cat $(VENV)/import-check.log; exit 1; }
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (tfx_course)" >/dev/null
	@# nbgrader is an instructors' tool (docs/instructors.md): keep its menus out of learners' lab.
	@for ext in $(NBGRADER_SERVER); do \
		$(BIN)/jupyter server extension disable --sys-prefix nbgrader.server_extensions.$$ext >/dev/null 2>&1 || exit 1; done
	@$(BIN)/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader >/dev/null 2>&1
	touch $(STAMP)

# Learners' JupyterLab opens on the lesson, without the news pop-up (a separate stamp, so that an
# existing .venv gets it too).
$(LAB_QUIET): $(STAMP)
	$(BIN)/jupyter labextension disable --level=sys_prefix "$(NEWS_PLUGIN)" >/dev/null 2>&1
	touch $(LAB_QUIET)

setup: $(STAMP) $(LAB_QUIET)

# No network in the room (README): fill a folder to carry on a USB stick, then install from it.
offline-bundle: setup
	@test -n "$(DEST)" || { echo "make offline-bundle DEST=FOLDER: name a new folder to fill" >&2; exit 1; }
	$(BIN)/python tools/offline.py fill "$(DEST)"

# `make setup` with pip's --no-index and the folder's wheels (OFFLINE sets PIP_OFFLINE), then the data.
offline-install: offline-folder setup
	$(BIN)/python tools/offline.py install-data "$(OFFLINE)"

offline-folder:
	@test -d "$(OFFLINE)/wheels" || { echo "make offline-install OFFLINE=FOLDER: FOLDER must be the \
	folder that make offline-bundle filled (it holds wheels/ and data/)" >&2; exit 1; }

lab: setup
	@# Opens at the repository root (lessons in notebooks/, practice in exercises/), on lesson 00.
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks/00_setup.ipynb \
		$(ROOT_FLAG) $(LAB_ARGS)

lint: setup
	$(BIN)/ruff check tfx_course tests benchmarks tools notebooks book
	$(BIN)/ruff format --check tfx_course tests benchmarks tools book

unit: setup
	$(BIN)/python -m pytest -q -n 2 tests

NBVAL := $(BIN)/python -m pytest -q -n 2 --dist loadfile --nbval --nbval-current-env \
	--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider notebooks
# CPU kernels another machine would use: PyTorch's portable (non-SIMD) kernels, and MKL and
# oneDNN held to SSE4. Stored outputs must hold there too, not only on the CPU that wrote them.
OTHER_CPU := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 DNNL_MAX_CPU_ISA=SSE41

nbval: setup
	$(NBVAL)

nbval-other-cpu: setup
	$(OTHER_CPU) $(NBVAL)

# Every solution must pass its checks; every untouched student notebook must fail them all.
grade: setup
	$(BIN)/tfx-course grade exercises/solutions --jobs 2 --kernel $(KERNEL)
	$(BIN)/tfx-course grade $(EXERCISES) --jobs 2 --kernel $(KERNEL) --expect not-attempted

# Grading runs before nbval so that the run ends on pytest's own summary line.
test: lint unit grade nbval-other-cpu nbval

# Under test the lessons run on the CPU, as the stored outputs did, even where a GPU is present
# (tfx.device.pick_device honours it); `make lab` lets the course pick the GPU.
unit grade nbval nbval-other-cpu notebooks: export TFX_COURSE_DEVICE := cpu

# The diagrams and each lesson's closing links first: the lessons' Markdown shows and links them.
notebooks: setup
	$(BIN)/python tools/diagrams.py
	$(BIN)/python tools/lesson_links.py
	$(BIN)/python tools/run_notebooks.py $(NOTEBOOKS)

# Does the lock install on every supported Python and platform? Asks the package index; no install.
check-lock: setup
	$(BIN)/python tools/check_lock.py

$(BOOK_STAMP): $(STAMP)
	set -o pipefail; $(PIP) -e ".[book]" -c $(LOCK) 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	$(BIN)/python -c "import sphinx, myst_nb, sphinx_book_theme, playwright"
	touch $(BOOK_STAMP)

$(MATHJAX_STAMP): book/package.json book/package-lock.json
	@command -v npm >/dev/null || { echo "make book: npm is missing. The site renders math with a \
	local MathJax, installed from the npm registry: install Node.js 18 or newer with npm (Debian: \
	apt-get install nodejs npm) and run make book again." >&2; exit 1; }
	npm ci --prefix book --no-audit --no-fund --loglevel=error
	touch $(MATHJAX_STAMP)

# The lessons are never re-run here: the pages show the outputs that nbval compares. Every
# warning (a broken link, a missing image, a bad cross-reference) fails the build.
book: $(BOOK_STAMP) $(MATHJAX_STAMP)
	rm -rf $(BOOK_OUT)/html
	$(BIN)/sphinx-build -b html -c book -d $(BOOK_OUT)/doctrees -E -W --keep-going -n -q \
		. $(BOOK_OUT)/html
	@echo "The site is in $(BOOK_OUT)/html: open $(BOOK_OUT)/html/index.html"

# Opens every page in Debian's Chromium (CHROMIUM=/path/to/chromium to use another).
test-book: book
	$(BIN)/python -m pytest -q tests/site

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(BOOK_OUT) book/node_modules

# Refresh the exact pins from the current .venv (after editing pyproject.toml's ranges).
lock: $(BOOK_STAMP)
	{ head -n 2 $(LOCK); $(BIN)/python -m pip freeze --exclude-editable 2>/dev/null \
		| sed -E 's/^(torch==[0-9.]+)\+[a-z0-9]+$$/\1/'; } > $(LOCK).new && mv $(LOCK).new $(LOCK)
