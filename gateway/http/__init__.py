"""HTTP surfaces: OpenAI-compatible, ops (health/readiness); more as they land."""
