"""Decisions: routing, and (as they land) retries, breakers, keys, budgets, limits, pricing."""
