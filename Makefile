.PHONY: run test bench lint

# Proxy plus demo adapters in front of a Docker Engine (a throwaway one when none answers).
run:
	scripts/run

# Every test: lint, unit, e2e against a real Docker Engine.
test:
	scripts/test

bench:
	scripts/bootstrap && .venv/bin/python bench/bench.py

lint:
	scripts/bootstrap && .venv/bin/ruff check .
