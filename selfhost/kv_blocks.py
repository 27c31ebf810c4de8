"""vLLM's prefix-cache block keys, computed from token ids: the keys a replica publishes in
its KV events (`BlockStored.block_hashes`) after it has cached those tokens.

How vLLM (v1, 0.10 to 0.32: `vllm/v1/core/kv_cache_utils.py`, `hash_block_tokens` and
`get_request_block_hasher`) keys its cache, and so how we do:

- The prompt's token ids are cut into full blocks of `block_size` tokens (`--block-size`;
  16 on GPUs, 128 for the CPU backend's attention); a partial last block has no key.
- Block i's hash is `hash_fn((parent, tuple(block_i_tokens), extra_keys))`, where `parent`
  is block i-1's hash, and for block 0 `NONE_HASH = hash_fn(seed)`. So a key stands for
  the whole prefix up to its block's end: two prompts share key i only if they share
  every token before it.
- `hash_fn` is `--prefix-caching-hash-algo`: `sha256` (the default: SHA-256 of the
  tuple pickled with protocol 5) or `sha256_cbor` (SHA-256 of its canonical CBOR).
  `xxhash*` seeds itself at random in each process unless PYTHONHASHSEED is set; we do
  not implement it.
- `seed` is the replica's PYTHONHASHSEED when its environment sets one, else vLLM's
  fixed "vllm-none-hash".
- `extra_keys` is None for a plain text prompt; for a LoRA adapter, `(("lora", name,
  path),)` on every block (the adapter's name and path as the replica loaded it). Images,
  `cache_salt` and prompt embeddings add keys we do not compute: such prompts get none.
- Events carry each hash as its low 64 bits, an unsigned int (vLLM's default,
  VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1), or as the 32-byte digest when that is 0.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

BlockKey = int | bytes
HashAlgo = Literal["sha256", "sha256_cbor"]
DEFAULT_SEED = "vllm-none-hash"  # vLLM's DEFAULT_NONE_HASH_SEED
_LOW64 = (1 << 64) - 1


def _sha256_pickle(value: Any) -> bytes:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def _sha256_cbor(value: Any) -> bytes:
    return hashlib.sha256(cbor(value)).digest()


_HASHES = {"sha256": _sha256_pickle, "sha256_cbor": _sha256_cbor}


def cbor(value: Any) -> bytes:
    """Canonical CBOR (RFC 8949 §4.2.1, what `cbor2.dumps(canonical=True)` writes) of the
    few types a block's hash input holds: None, ints, bytes, str, tuples and lists."""
    out = bytearray()
    _cbor(value, out)
    return bytes(out)


def _cbor_head(major: int, n: int, out: bytearray) -> None:
    if n < 24:
        out.append(major << 5 | n)
    elif n < 1 << 8:
        out += bytes((major << 5 | 24, n))
    elif n < 1 << 16:
        out += struct.pack(">BH", major << 5 | 25, n)
    elif n < 1 << 32:
        out += struct.pack(">BI", major << 5 | 26, n)
    else:
        out += struct.pack(">BQ", major << 5 | 27, n)


def _cbor(value: Any, out: bytearray) -> None:
    if value is None:
        out.append(0xF6)
    elif isinstance(value, bool):
        out.append(0xF5 if value else 0xF4)
    elif isinstance(value, int):
        if not -(1 << 64) <= value < 1 << 64:
            raise ValueError("integer out of CBOR's 64-bit range")
        _cbor_head(0, value, out) if value >= 0 else _cbor_head(1, -1 - value, out)
    elif isinstance(value, bytes):
        _cbor_head(2, len(value), out)
        out += value
    elif isinstance(value, str):
        data = value.encode()
        _cbor_head(3, len(data), out)
        out += data
    elif isinstance(value, tuple | list):
        _cbor_head(4, len(value), out)
        for item in value:
            _cbor(item, out)
    else:
        raise TypeError(f"cannot CBOR-encode {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class BlockHasher:
    """One replica's block keys. Its settings must be the replica's: `block_size` as its
    events report it, `algo` and `seed` as its flags and environment set them."""

    block_size: int
    algo: HashAlgo = "sha256"
    seed: str = DEFAULT_SEED
    int_keys: bool = True  # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES (vLLM's default: on)
    # Blocks hashed lately (a shared system prompt's, mostly), as vLLM keeps them too: a
    # dict lookup instead of a pickle and a SHA-256 (0.4 ms for 4,000 tokens in blocks
    # of 16). Oldest out first.
    memo_size: int = 0
    _root: bytes = field(init=False, repr=False)
    _memo: dict[tuple[Any, ...], bytes] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be at least 1")
        if self.algo not in _HASHES:
            raise ValueError(f"unsupported hash algorithm {self.algo!r}")
        object.__setattr__(self, "_root", _HASHES[self.algo](self.seed))

    def digests(self, token_ids: Sequence[int], extra: tuple[Any, ...] | None = None,
                parent: bytes | None = None) -> list[bytes]:
        """The full digests of every full block, in order (what vLLM keeps internally);
        `parent`: the digest of the block before `token_ids` (they continue a prompt)."""
        fn, size = _HASHES[self.algo], self.block_size
        parent, out = parent or self._root, []
        memo, cap = self._memo, self.memo_size
        for end in range(size, len(token_ids) + 1, size):
            block = (parent, tuple(token_ids[end - size:end]), extra)
            digest = memo.get(block) if cap else None
            if digest is None:
                digest = fn(block)
                if cap:
                    if len(memo) >= cap:
                        del memo[next(iter(memo))]
                    memo[block] = digest
            parent = digest
            out.append(parent)
        return out

    def keys(self, token_ids: Sequence[int], extra: tuple[Any, ...] | None = None
             ) -> list[BlockKey]:
        """The keys of every full block as the replica's events carry them."""
        return self.as_keys(self.digests(token_ids, extra))

    def as_keys(self, digests: Sequence[bytes]) -> list[BlockKey]:
        if not self.int_keys:
            return list(digests)
        return [int.from_bytes(d, "big") & _LOW64 for d in digests]


def lora_extra(name: str, path: str) -> tuple[Any, ...]:
    """The extra keys of every block of a request for a LoRA adapter."""
    return (("lora", name, path),)
