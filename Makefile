# The two commands of the README. Both create/reuse .venv first (scripts/bootstrap.sh).
.PHONY: demo test test-fast lint venv lock

venv:
	@./scripts/bootstrap.sh

demo: venv  ## run the main job end to end on the embedded toy world
	.venv/bin/python -m flows.demo

test: venv  ## the whole test suite, slow end-to-end tests included (what CI runs)
	.venv/bin/python -m pytest -q

test-fast: venv  ## the quick loop: skip tests marked slow
	.venv/bin/python -m pytest -q -m "not slow"

lint: venv
	.venv/bin/ruff check sdd flows tests bench

lock:  ## refresh requirements.lock from the current environment (torch excluded: installed first)
	.venv/bin/uv pip freeze --python .venv/bin/python --exclude-editable | grep -vE '^(torch|nvidia-|triton)' > requirements.lock
