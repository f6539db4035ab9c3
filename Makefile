# make demo   set everything up (first run builds llama.cpp, ~15 min on 2 cores) and run the demo
# make test   set everything up and run the test suite
.PHONY: setup demo test bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/narrative demo

test: setup
	.venv/bin/python -m pytest tests -q

bench: setup
	.venv/bin/python benchmarks/retrieval.py
