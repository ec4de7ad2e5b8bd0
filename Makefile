.PHONY: run test bench lint demo

# Proxy plus demo adapters in front of a Docker Engine (a throwaway one when none answers).
run:
	scripts/run

# Every test: lint, unit, e2e against a real Docker Engine.
test:
	scripts/test

# Hosts sharing only a network, a swarm, compose and etcd: data and addresses follow their
# containers from host A to host B (powerstrip demo --local: the one-machine story).
demo:
	scripts/bootstrap && .venv/bin/python -m powerstrip demo

# HAProxy is measured in the same run as the yardstick a proxy is judged against.
bench:
	scripts/bootstrap && scripts/bootstrap-bench && .venv/bin/python bench/bench.py

lint:
	scripts/bootstrap && .venv/bin/ruff check .
