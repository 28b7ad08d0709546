# The two commands of the README. Both do all the set-up on a fresh machine first.
#   make demo   the main job: a node, a PACS (Orthanc) and a synthetic brain study, end to end
#   make test   the whole test suite
.PHONY: setup demo serve test lint

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/pacsnode demo

serve: setup
	.venv/bin/pacsnode serve --config config.toml

test: setup
	TCP_NODELAY=1 .venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check pacsnode distillation tests benchmarks
