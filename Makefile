# pagefault: `make demo` runs the whole job on a sample corpus; `make test` runs the suite.
SHELL := /bin/bash
PY := .venv/bin/python
ANALYZE := .venv/bin/analyze
STAMP := .venv/.installed
DOCS ?= ./corpus
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test ingest bench clean

setup: $(STAMP)

# torch first and pinned: the CPU build lies on this machine's disk; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

ingest: $(STAMP)
	$(ANALYZE) ingest $(DOCS)

bench: $(STAMP)
	$(PY) -m pipeline.bench

clean:
	rm -rf ingest/archive outputs/*.jsonl outputs/bench
