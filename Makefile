# One-stop setup: `make demo` (install + main job), `make test` (install + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 resolves to the CPU wheel on this platform; never pulls torchvision
	$(BIN)/pip install -q -e '.[test,web]'
	# Test-only: OpenAI's reference tokenizer file, to check ours against it (the package ships
	# its own copy of the merges file); --no-deps keeps torchvision out, and it is never imported.
	$(BIN)/pip install -q --no-deps clip-anytorch==2.6.0
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium for the browser tests of the web page (playwright drives it).
browser:
	@command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null))

# The main job: a face from text + a mask with the shipped weights (and 4 seeds as a grid).
demo: $(STAMP)
	mkdir -p out
	$(BIN)/mm2latent generate --text "a smiling woman with blond hair" --mask examples/mask_long_hair.png --out out/face.png
	$(BIN)/mm2latent generate --text "a smiling woman with blond hair" --mask examples/mask_long_hair.png --num 4 --out out/seeds

test: $(STAMP) browser
	MM2LATENT_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -rs

clean:
	rm -rf $(VENV) out
