# make demo   set everything up (first run builds llama.cpp, ~15 min on 2 cores) and run the demo
# make test   set everything up and run the test suite
.PHONY: setup demo test bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/narrative demo

test: setup
	.venv/bin/python -m pytest tests -q

bench: setup  # retrieval quality, batch throughput; lore_scale.py (a 10,000-entry index) and context_ttft.py (lore prefixes up to ~64k tokens) are left out as long runs: run them by hand
	.venv/bin/python benchmarks/retrieval_quality.py && .venv/bin/python benchmarks/batch.py
