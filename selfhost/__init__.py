"""Self-hosted vLLM pools: membership, probes, metrics scraping, launchers and the simulator."""
