# One-stop setup: `make demo` (install + main job), `make test` (install + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 resolves to the CPU wheel on this platform; never pulls torchvision
	$(BIN)/pip install -q -e '.[test]'
	# CLIP's BPE merges file ships in clip-anytorch; --no-deps keeps torchvision out.
	# The package is only read as data (never imported).
	$(BIN)/pip install -q --no-deps clip-anytorch==2.6.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/mm2latent world render --num 16 --seed 0 --out out/world
	$(BIN)/mm2latent world sheet --num 16 --seed 0 --out out/world_sheet.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out
