"""Upstream dialects: one module per wire format, all behind `adapters.base.Adapter`."""

from __future__ import annotations

from adapters.anthropic import AnthropicAdapter
from adapters.base import Adapter
from adapters.gemini import GeminiAdapter
from adapters.openai import OpenAIAdapter

_ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
}


def get_adapter(dialect: str) -> Adapter:
    return _ADAPTERS[dialect]
