.PHONY: run test lint
run:   ## start the gateway on 127.0.0.1:8080 with the demo config
	scripts/run.sh
test:  ## install everything, lint, type-check and run every test
	scripts/test.sh
lint:
	scripts/bootstrap.sh && .venv/bin/ruff check . && .venv/bin/mypy
.PHONY: bench
bench: ## Turnout vs direct vs floor proxy vs LiteLLM (~5 min; extra flags: make bench ARGS="--rounds 2")
	scripts/bootstrap.sh && .venv/bin/python -m bench $(ARGS)

.PHONY: routing-sim
routing-sim:  ## routing policies on the same simulated traffic: tables, JSON, plots in bench/results (seconds; ARGS="--seed 2")
	scripts/bootstrap.sh && .venv/bin/python -m bench.routing_sim $(ARGS)

.PHONY: routing-e2e
routing-e2e:  ## routing policies through the real gateway, simulator processes and faults (~15 min a seed; ARGS="--seeds 1,2,3" or "--experiment short")
	scripts/bootstrap.sh && .venv/bin/python -m bench.routing_e2e $(ARGS)

.PHONY: kv-sim
kv-sim:  ## kv-aware vs prefix-affinity, least-loaded, round-robin under KV-cache pressure, seeds 1-5 (seconds; ARGS="--rps 80")
	scripts/bootstrap.sh && .venv/bin/python -m bench.kv_sim $(ARGS)
