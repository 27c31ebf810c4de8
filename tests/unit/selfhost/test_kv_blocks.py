"""Block keys against vLLM's own hash functions. The expected values were computed with
vLLM 0.32's `vllm.utils.hashing.sha256` / `sha256_cbor` and `hash_block_tokens` (in
`.venv-vllm`); the real-vLLM test (tests/e2e/test_vllm_kv.py) checks them against what a
running replica publishes."""

from __future__ import annotations

import pytest

from selfhost.kv_blocks import BlockHasher, cbor, lora_extra


def test_sha256_keys_equal_vllms() -> None:
    # Two full blocks of four tokens; the ninth token makes no block.
    assert BlockHasher(4, "sha256_cbor").keys(list(range(9))) == [
        1088283741995145368, 1498344643476930809]


def test_seed_and_lora_extra_keys_equal_vllms() -> None:
    hasher = BlockHasher(4, "sha256", seed="0")  # a replica with PYTHONHASHSEED=0
    assert hasher.keys(list(range(5)), lora_extra("a", "/p")) == [10394014562311568014]


def test_keys_chain_the_prefix() -> None:
    hasher = BlockHasher(2)
    a = hasher.keys([1, 2, 3, 4, 5, 6])
    b = hasher.keys([1, 2, 3, 4, 9, 9])
    c = hasher.keys([7, 7, 3, 4, 5, 6])
    assert a[:2] == b[:2] and a[2] != b[2]
    assert all(x != y for x, y in zip(a, c, strict=True))  # block 1 differs by its parent


def test_digest_keys_when_int_keys_are_off() -> None:
    hasher = BlockHasher(2, int_keys=False)
    digests = hasher.keys([1, 2, 3, 4])
    assert [len(d) for d in digests] == [32, 32]
    assert [int.from_bytes(d, "big") & (2**64 - 1) for d in digests] == BlockHasher(2).keys(
        [1, 2, 3, 4])


@pytest.mark.parametrize(("value", "encoded"), [
    (None, "f6"), (0, "00"), (23, "17"), (24, "1818"), (500, "1901f4"),
    (2**32, "1b0000000100000000"), (-1, "20"), (-500, "3901f3"),
    (b"ab", "426162"), ("lora", "646c6f7261"), ((1, (2, None)), "820182 02f6".replace(" ", "")),
])
def test_canonical_cbor(value: object, encoded: str) -> None:
    assert cbor(value).hex() == encoded


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        BlockHasher(0)
    with pytest.raises(ValueError):
        BlockHasher(16, "xxhash")


def test_memoized_keys_are_the_same() -> None:
    hasher, plain = BlockHasher(4, memo_size=3), BlockHasher(4)
    tokens = list(range(40))
    assert hasher.keys(tokens) == plain.keys(tokens)  # 10 blocks through a memo of 3
    assert hasher.keys(tokens[:12]) == plain.keys(tokens[:12])
