# make run   [ARGS="--help"]          bootstrap .venv, then run the server in the foreground
# make test  [PYTEST_ARGS="-x -k irc"]  install the test servers, bootstrap, run pytest
.PHONY: run test

ARGS ?=
PYTEST_ARGS ?=

run:
	scripts/bootstrap
	exec .venv/bin/twistd -n flowtwist $(ARGS)

test:
	scripts/install-test-deps && scripts/bootstrap && .venv/bin/python -m pytest $(PYTEST_ARGS)
