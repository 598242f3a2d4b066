# The two commands of the README: `make demo` (tiny PPO run on local Ray) and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test test-fast

setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) -m rlhf.run configs/tiny/ppo.yaml

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests
