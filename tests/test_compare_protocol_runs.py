"""scripts/compare_protocol_runs.py: two recipes paired episode by episode over the same protocol
scenes; the differences and tests follow the flipped episodes; refusals name the file."""
from __future__ import annotations

import copy
import importlib.util
import json

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("compare_protocol_runs", REPO / "scripts" / "compare_protocol_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)
SEED0 = json.loads((REPO / "docs/results/mt50/results.json").read_text())
SEED1 = json.loads((REPO / "docs/results/mt50/seed1/results.json").read_text())


def _compare(a, b):
    protocol, pairs = compare_runs.paired_flags(a, b, [f"a{i}" for i in range(len(a))], [f"b{i}" for i in range(len(b))])
    return compare_runs.compare(protocol, pairs)


def test_a_run_against_itself_differs_by_nothing():
    result = _compare([SEED0], [copy.deepcopy(SEED0)])
    overall = result["overall"]
    assert overall["a"] == overall["b"] == pytest.approx(SEED0["overall"]["success_rate"])
    assert overall["difference"] == 0 and overall["only_a"] == overall["only_b"] == 0
    assert overall["mcnemar_p"] == 1.0 and overall["p_value"] == 1.0


def test_the_committed_seeds_split_as_their_episodes_do():
    result = _compare([SEED0], [SEED1])
    overall = result["overall"]
    assert overall["a"] == pytest.approx(SEED0["overall"]["success_rate"])
    assert overall["b"] == pytest.approx(SEED1["overall"]["success_rate"])
    only_a = sum(x["success"] and not y["success"] for t in SEED0["episodes"]
                 for x, y in zip(SEED0["episodes"][t], SEED1["episodes"][t]))
    assert overall["only_a"] == only_a and overall["pairs"] == 500
    lo, hi = overall["ci95"]
    assert lo < overall["difference"] < hi and lo < 0 < hi  # 37 vs 37: no difference
    for bucket, r in result["buckets"].items():
        assert r["a"] == pytest.approx(SEED0["buckets"][bucket]["success_rate"])


def test_a_recipe_that_solves_a_task_more_is_significantly_better():
    better = copy.deepcopy(SEED0)
    flipped = 0
    for task in [t for t, v in SEED0["tasks"].items() if v["bucket"] == "medium"]:
        for e in better["episodes"][task]:
            flipped += not e["success"]
            e["success"] = True
    result = _compare([SEED0, SEED0], [better, better])
    medium = result["buckets"]["medium"]
    assert medium["b"] == 1.0 and medium["only_b"] == 2 * flipped and medium["only_a"] == 0
    assert result["overall"]["difference"] == pytest.approx((1.0 - SEED0["buckets"]["medium"]["success_rate"]) / 4)
    assert result["overall"]["ci95"][0] > 0 and result["overall"]["mcnemar_p"] < 1e-6
    table = compare_runs.format_comparison(result, "cnn", "eff")
    assert "| medium | " in table and "only eff" in table


def test_other_scenes_other_protocols_and_unpaired_seeds_are_refused_by_name():
    moved = copy.deepcopy(SEED0)
    moved["episodes"]["reach-v3"][0]["scene"] += 1
    with pytest.raises(SystemExit, match="b0: the episodes of reach-v3 are not a0's scenes"):
        _compare([SEED0], [moved])
    other = copy.deepcopy(SEED0)
    other["protocol"] = "lerobot-metaworld"
    with pytest.raises(SystemExit, match="different protocols: lerobot-metaworld, starvla-mt50"):
        _compare([SEED0], [other])
    with pytest.raises(SystemExit, match="--a has 2 results and --b 1"):
        _compare([SEED0, SEED1], [SEED0])
