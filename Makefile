.PHONY: run test bench lint demo

# Proxy plus demo adapters in front of a Docker Engine (a throwaway one when none answers).
run:
	scripts/run

# Every test: lint, unit, e2e against a real Docker Engine.
test:
	scripts/test

# Two throwaway engines as two hosts: a container's data and address follow it from A to B.
demo:
	scripts/bootstrap && .venv/bin/python -m powerstrip demo

bench:
	scripts/bootstrap && .venv/bin/python bench/bench.py

lint:
	scripts/bootstrap && .venv/bin/ruff check .
