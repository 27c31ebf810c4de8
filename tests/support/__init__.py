"""Test harness: real processes on real ports (gateway, redis-server, simulators)."""
