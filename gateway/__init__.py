"""Turnout: an LLM inference gateway."""
