"""Benchmark harness: Turnout vs direct-to-upstream vs a floor proxy vs LiteLLM, one run.

`python -m bench` (or `make bench`) runs everything; `python -m bench --smoke` is the
few-second end-to-end check the test suite runs. See `bench/__main__.py`.
"""
