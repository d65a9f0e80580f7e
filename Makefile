# The two commands of the README. Both create/reuse .venv first (scripts/bootstrap.sh).
.PHONY: demo test test-fast lint venv lock

venv:
	@./scripts/bootstrap.sh

demo: venv  ## run the main job end to end on the embedded toy world
	.venv/bin/python -m flows.demo

# Two xdist workers (one per core; tests/conftest.py says how the suite is spread over them) and the
# 25 slowest tests at the end, so a slow one shows up in every run.
PYTEST = .venv/bin/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=25

test: venv  ## the whole test suite, slow end-to-end tests included (what CI runs)
	$(PYTEST)

test-fast: venv  ## the quick loop: skip tests marked slow
	$(PYTEST) -m "not slow"

lint: venv
	.venv/bin/ruff check sdd flows tests bench

lock:  ## refresh requirements.lock from the current environment (torch excluded: installed first)
	.venv/bin/uv pip freeze --python .venv/bin/python --exclude-editable | grep -vE '^(torch|nvidia-|triton)' > requirements.lock
