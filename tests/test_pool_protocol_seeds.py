"""scripts/pool_protocol_seeds.py: seeds pooled over the same protocol episodes; refusals."""
from __future__ import annotations

import copy
import importlib.util
import json

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("pool_protocol_seeds", REPO / "scripts" / "pool_protocol_seeds.py")
pool_seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pool_seeds)
SEED0 = json.loads((REPO / "docs/results/lerobot-metaworld/results.json").read_text())


def test_a_seed_pooled_with_itself_keeps_its_rates_with_a_narrower_interval():
    pooled, _ = pool_seeds.pool([SEED0, copy.deepcopy(SEED0)], ["a", "b"])
    assert pooled["per_seed"] == [SEED0["overall"]["success_rate"]] * 2 and pooled["std_of_seeds"] == 0.0
    overall = pooled["pooled"]["overall"]
    assert overall["success_rate"] == pytest.approx(SEED0["overall"]["success_rate"])
    lo, hi = overall["ci95"]
    assert SEED0["overall"]["ci95"][0] < lo < overall["success_rate"] < hi < SEED0["overall"]["ci95"][1]
    for b, v in pooled["pooled"]["buckets"].items():
        assert v["episodes"] == 2 * SEED0["buckets"][b]["episodes"]
    assert pooled["pooled"]["episodes_from_training_scenes"] == 2 * SEED0["episodes_from_training_scenes"]
    unknown = copy.deepcopy(SEED0)
    unknown["episodes_from_training_scenes"] = None  # evaluated without the recording: the pool cannot know
    assert pool_seeds.pool([SEED0, unknown], ["a", "b"])[0]["pooled"]["episodes_from_training_scenes"] is None


def test_one_flipped_episode_moves_the_pool_by_it():
    other = copy.deepcopy(SEED0)
    first = other["episodes"]["button-press-v3"][0]
    assert first["success"]
    first["success"] = False
    pooled, _ = pool_seeds.pool([SEED0, other], ["a", "b"])
    easy = pooled["pooled"]["buckets"]["easy"]
    assert easy["successes"] == 2 * SEED0["buckets"]["easy"]["successes"] - 1


def test_other_scenes_or_protocols_are_refused():
    other = copy.deepcopy(SEED0)
    other["episodes"]["reach-v3"][3]["scene"] += 1
    with pytest.raises(SystemExit, match="b: the episodes of reach-v3 are not a's scenes"):
        pool_seeds.pool([SEED0, other], ["a", "b"])
    other = copy.deepcopy(SEED0)
    other["protocol"] = "starvla-mt50"
    with pytest.raises(SystemExit, match="different protocols: lerobot-metaworld, starvla-mt50"):
        pool_seeds.pool([SEED0, other], ["a", "b"])
