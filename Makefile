.PHONY: run test lint
run:   ## start the gateway on 127.0.0.1:8080 with the demo config
	scripts/run.sh
test:  ## install everything, lint, type-check and run every test
	scripts/test.sh
lint:
	scripts/bootstrap.sh && .venv/bin/ruff check . && .venv/bin/mypy
