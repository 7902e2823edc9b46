.PHONY: setup demo test lint lab-down bench

setup:
	scripts/bootstrap.sh

demo: setup
	scripts/demo.sh

test:
	scripts/test.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

lab-down:
	DEMO=1 .venv/bin/python manage.py lab down

bench: setup
	.venv/bin/python manage.py bench_progress
	.venv/bin/python manage.py bench_predict
