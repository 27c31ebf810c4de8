"""A simulated replica's LoRA adapters, as vLLM serves them with `--enable-lora`: the
adapters it has loaded (each a model in `/v1/models`, `parent` the base model, `root` its
path), which ones requests are running (`vllm:lora_requests_info`), and, with runtime
updates allowed (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING), `/v1/load_lora_adapter` and
`/v1/unload_lora_adapter` with vLLM's answers.
"""

from __future__ import annotations

import time
from collections import Counter

import orjson


class Adapters:
    def __init__(self, loaded: dict[str, str] | None = None, *, max_loras: int = 4,
                 runtime_updates: bool = False) -> None:
        self.loaded: dict[str, str] = dict(loaded or {})  # name → path
        self.max_loras = max_loras
        self.runtime_updates = runtime_updates
        self.running: Counter[str] = Counter()
        self.loads = 0  # runtime loads served, for tests

    def __contains__(self, name: object) -> bool:
        return name in self.loaded

    def key(self, model: str) -> tuple[str, str] | None:
        """(name, path) when `model` names a loaded adapter: its blocks' extra key."""
        path = self.loaded.get(model)
        return None if path is None else (model, path)

    def begin(self, model: str) -> None:
        if model in self.loaded:
            self.running[model] += 1

    def end(self, model: str) -> None:
        if self.running.get(model):
            self.running[model] -= 1
            if not self.running[model]:
                del self.running[model]

    def metric(self, waiting: tuple[str, ...]) -> bytes:
        running = ",".join(sorted(self.running))
        return (
            "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
            "# TYPE vllm:lora_requests_info gauge\n"
            f'vllm:lora_requests_info{{max_lora="{self.max_loras}",'
            f'running_lora_adapters="{running}",waiting_lora_adapters="{",".join(waiting)}"}}'
            f" {time.time()!r}\n").encode()

    def load_request(self, raw: bytes) -> tuple[int, str]:
        """`POST /v1/load_lora_adapter` {lora_name, lora_path}: (status, body)."""
        fields = _fields(raw)
        if fields is None:
            return 400, "lora_name and lora_path must be strings"
        name, path = fields
        if name in self.loaded:
            return 400, f"The lora adapter '{name}' has already been loaded."
        self.loaded[name] = path
        self.loads += 1
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def unload_request(self, raw: bytes) -> tuple[int, str]:
        fields = _fields(raw, need_path=False)
        if fields is None or fields[0] not in self.loaded:
            return 404, "The lora adapter was not found."
        del self.loaded[fields[0]]
        return 200, f"Success: LoRA adapter '{fields[0]}' removed successfully."


def _fields(raw: bytes, *, need_path: bool = True) -> tuple[str, str] | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    name, path = body.get("lora_name"), body.get("lora_path", "")
    if not isinstance(name, str) or not name or not isinstance(path, str):
        return None
    if need_path and not path:
        return None
    return name, path
