"""A request's block keys for a pool's replicas: its prompt tokenized as the replica will
(`kv_tokens.py`, or the simulator's tokenizer), hashed as vLLM hashes its cache blocks
(`kv_blocks.py`). The `BlockKeyer` that `policies/routing/kv_aware.py` asks.

A request is tokenized once, however many replicas and block sizes it is keyed for; a
request for a LoRA adapter is keyed with the adapter's extra keys (its name and path as
the replica loaded it), as vLLM keys its blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.canonical import CanonicalRequest, Deployment
from selfhost.kv_blocks import DEFAULT_SEED, BlockHasher, BlockKey, HashAlgo, lora_extra


class PromptTokenizer(Protocol):
    def tokens(self, req: CanonicalRequest) -> list[int] | None: ...


# Blocks whose digests are kept per block size: ~300 bytes each, 16k: ~5 MB; a
# 4,000-token system prompt is 250 blocks of 16.
_MEMO_BLOCKS = 16_384

# The adapter a deployment's upstream model names: (name, path on the replica), or None
# for the base model.
AdapterOf = Callable[[Deployment], tuple[str, str] | None]


class RequestKeys:
    def __init__(self, tokenizer: PromptTokenizer, *, algo: HashAlgo = "sha256",
                 seed: str = DEFAULT_SEED, int_keys: bool = True,
                 adapter_of: AdapterOf | None = None) -> None:
        self._tokenizer = tokenizer
        self._algo, self._seed, self._int_keys = algo, seed, int_keys
        self._adapter_of = adapter_of
        self._hashers: dict[int, BlockHasher] = {}
        # The last request keyed (by identity), its tokens and its keys by block size and
        # adapter: a plan keys one request for every replica of a pool in a row.
        self._req: CanonicalRequest | None = None
        self._tokens: list[int] | None = None
        self._keys: dict[tuple[int, tuple[str, str] | None], list[BlockKey]] = {}

    def keys(self, req: CanonicalRequest, dep: Deployment, block_size: int
             ) -> Sequence[BlockKey] | None:
        if req is not self._req:
            self._req, self._tokens, self._keys = req, self._tokenizer.tokens(req), {}
        tokens = self._tokens
        if tokens is None:
            return None
        adapter = self._adapter_of(dep) if self._adapter_of is not None else None
        memo = (block_size, adapter)
        keys = self._keys.get(memo)
        if keys is None:
            hasher = self._hashers.get(block_size)
            if hasher is None:
                hasher = self._hashers[block_size] = BlockHasher(
                    block_size, self._algo, self._seed, self._int_keys, memo_size=_MEMO_BLOCKS)
            extra = lora_extra(*adapter) if adapter is not None else None
            keys = self._keys[memo] = hasher.keys(tokens, extra)
        return keys
