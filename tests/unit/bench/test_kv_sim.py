"""The KV-aware routing simulation, short: it runs the real policies on replicas whose
block caches publish events through vLLM's wire format into the index."""

from __future__ import annotations

from pathlib import Path

from bench import kv_sim


def test_kv_aware_finds_more_cached_prefix_than_affinity() -> None:
    scn = kv_sim.Scenario(duration_s=30.0)
    by_policy = {s.policy: s for s in kv_sim.run(scn, seed=1)}
    kv, affinity = by_policy["kv-aware"], by_policy["prefix-affinity"]
    assert kv.requests == affinity.requests > 1000
    assert (kv.prefix_hit_rate or 0) > (affinity.prefix_hit_rate or 0)
    assert (affinity.prefix_hit_rate or 0) > (by_policy["round-robin"].prefix_hit_rate or 0)
    assert kv.ttft_attainment >= affinity.ttft_attainment
    assert kv.errors == 0


def test_cli_writes_the_tables_and_json(tmp_path: Path) -> None:
    assert kv_sim.main(["--seeds", "1", "--duration", "5", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("kv-sim-*.json"))) == 1
