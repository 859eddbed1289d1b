# Set-up, serving and testing. `make serve`, `make lint` and `make test` each install what they
# need first; `make test` (what CI runs) lints and type-checks before the tests, and installs
# headless Chromium for the browser tests of the API docs (`make browser`) and redis-server for
# the shared rate-limit tests (`make redis`).
#
# llama-cpp-python builds from source. The default native build emits Intel AMX instructions
# that these CPUs advertise but cannot execute ("Illegal instruction" at the first
# generation), so the CPU build names its instruction sets explicitly. Elsewhere:
#   CUDA:   make install LLAMA_CMAKE_ARGS="-DGGML_CUDA=on" PIP_FLAGS="--no-cache-dir"
#   native: make install LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON" PIP_FLAGS="--no-cache-dir"
# (PIP_FLAGS keeps pip from reusing a wheel it built earlier with other flags.)

PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
PIP_FLAGS ?=
CORPUS ?= ../shared/corpus
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser redis serve lint test bench bench-generation bench-kv bench-quality ingest

install: $(STAMP)

# Debian's chromium, which backend/tests/browser drives through Playwright (never a browser
# Playwright downloads itself). Installed when missing as root (CI); otherwise those tests are
# skipped, with this note.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } || \
	      echo "could not install chromium: the browser tests will be skipped"; \
	  else \
	    echo "chromium is missing: the browser tests will be skipped (sudo apt-get install chromium)"; \
	  fi; }

# Debian's redis-server, which backend/tests/api/test_limits.py starts on loopback (a free port,
# no persistence) to test per-minute limits shared by replicas (RATE_LIMIT_STORAGE_URI).
# Installed when missing as root (CI); otherwise those tests are skipped, with this note.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; } || \
	      echo "could not install redis-server: the shared rate-limit tests will be skipped"; \
	  else \
	    echo "redis-server is missing: the shared rate-limit tests will be skipped (sudo apt-get install redis-server)"; \
	  fi; }

$(STAMP): backend/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# The local CPU wheel; an unpinned torch would pull several GB of CUDA packages.
	$(BIN)/python -m pip install $(PIP_FLAGS) torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install $(PIP_FLAGS) -e "backend[test]"
	touch $(STAMP)

serve: install
	cd backend && ../$(BIN)/writer-assistant serve --host $(HOST) --port $(PORT)

# ruff and mypy (pinned in the test extras) with their settings in backend/pyproject.toml.
lint: install
	cd backend && ../$(BIN)/ruff check app tests bench examples && ../$(BIN)/mypy

test: lint browser redis
	cd backend && ../$(BIN)/python -m pytest

# An author's sequence of agents on one story, two stories interleaved, cold then warm, with
# the prefix KV state cache on, off and with a q8_0 KV cache (about 12 minutes on 2 cores).
bench: install
	cd backend && ../$(BIN)/python -m bench.bench_agents

bench-generation: install
	cd backend && ../$(BIN)/python -m bench.bench_generation

# Ways to keep several story prefixes warm in raw llama-cpp-python (about 5 minutes).
bench-kv: install
	cd backend && ../$(BIN)/python -m bench.bench_kv_state

# The whole corpus into the archive (backend/data/archive), with a progress bar.
ingest: install
	cd backend && ../$(BIN)/writer-assistant ingest --threads 2 ../$(CORPUS)

# The share of useful answers before and after the content check and its retries, per agent,
# on Alice and Holmes (about 10 minutes on 2 cores).
bench-quality: install
	cd backend && ../$(BIN)/python -m bench.bench_answer_quality
