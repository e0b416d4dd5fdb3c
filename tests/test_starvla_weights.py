"""The starVLA fixtures' weights store (bench/starvla_weights.py): a state dict written as parts
comes back bit for bit (tied tensors stored once, bfloat16-valued float32 tensors stored in two
bytes), a changed part is refused by name, every committed fixture's state rebuilds to the sha256
its parity script recorded, the store holds no part that no fixture names, and the starVLA
fixtures stay within the issue's budget ("a few MB in all": 5 MB)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from starvla_weights import FIXTURES, digest, load_state, prune, read_part, save_state, state_index  # noqa: E402

BUDGET = 5_000_000  # bytes under tests/fixtures/starvla (issue 20: "a few MB in all")


def example_state() -> dict:
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(11, 4, generator=g).bfloat16().float()  # bfloat16 values in float32
    return {"qwen_vl_interface.model.model.language_model.embed_tokens.weight": embed,
            "qwen_vl_interface.model.lm_head.weight": embed.clone(),  # tied: equal bytes
            "qwen_vl_interface.model.model.language_model.layers.0.mlp.up_proj.weight": torch.randn(3, 4, generator=g),
            "qwen_vl_interface.model.model.visual.patch_embed.proj.weight": torch.randn(2, 3, generator=g).bfloat16().float(),
            "action_model.layer.weight": torch.randn(5, 2, generator=g),
            "action_model.layer.bias": torch.tensor([-0.0, 0.0, 1.0, 2.5, -3.0]),  # -0.0 kept apart from 0.0
            "action_model.steps": torch.tensor(7)}


def test_round_trip_is_bit_exact_and_stores_repeats_once(tmp_path):
    state = example_state()
    index = save_state(tmp_path / "a", state, {"starvla_commit": "0ed0aad"})
    assert index["sha256"] == digest(state) and index["tensors"] == len(state)
    back = load_state(tmp_path / "a")
    assert list(back) == sorted(state) and digest(back) == digest(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
    # the same state saved by a second fixture adds no file: its parts are the first one's
    files = {p.name: p.read_bytes() for p in (tmp_path / "weights").iterdir()}
    save_state(tmp_path / "b", state, {})
    assert {p.name: p.read_bytes() for p in (tmp_path / "weights").iterdir()} == files  # same names, same bytes
    assert state_index(tmp_path / "b")["parts"] == index["parts"]
    embeddings = next(p for p in index["parts"] if "qwen_vl_interface.model.lm_head.weight" in read_part(tmp_path / p))
    stored = load_file(str(tmp_path / embeddings))
    assert list(stored) == ["qwen_vl_interface.model.lm_head.weight"] and stored["qwen_vl_interface.model.lm_head.weight"].dtype == torch.bfloat16
    head = next(p for p in index["parts"] if "action_model.layer.weight" in read_part(tmp_path / p))
    assert load_file(str(tmp_path / head))["action_model.layer.weight"].dtype == torch.float32  # not bfloat16 values


def test_a_changed_part_is_refused_by_name(tmp_path):
    index = save_state(tmp_path / "a", example_state(), {})
    part = tmp_path / index["parts"][0]
    tensors = load_file(str(part))
    from safetensors import safe_open
    with safe_open(str(part), "pt") as f:
        meta = f.metadata()
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(part), metadata=meta)
    with pytest.raises(ValueError, match=r"a/state\.json: its parts rebuild .* sha256"):
        load_state(tmp_path / "a")
    save_file(tensors, str(part))  # no format tag
    with pytest.raises(ValueError, match="not a starVLA fixture weights part"):
        load_state(tmp_path / "a")


def test_every_fixture_state_rebuilds_and_the_store_holds_nothing_else():
    indexes = sorted(FIXTURES.glob("*/state*.json"))
    assert len(indexes) >= 13, indexes  # 13 parity fixtures (and qwendd's state_bit)
    for index in indexes:
        state = load_state(index.parent, index.stem)  # raises on a digest mismatch
        assert state and all(v.dtype == torch.float32 for v in state.values()), index
        assert json.loads(index.read_text())["metadata"]["starvla_commit"].startswith("0ed0aad"), index
    assert not list(FIXTURES.glob("*/state.safetensors")), "a fixture still holds a whole state file"
    assert prune(FIXTURES, dry_run=True) == [], "parts no fixture names: scripts/parity's save_state prunes them"


def test_the_starvla_fixtures_fit_the_budget():
    files = [p for p in FIXTURES.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    largest = sorted(files, key=lambda p: -p.stat().st_size)[:5]
    assert total <= BUDGET, f"tests/fixtures/starvla holds {total} bytes (budget {BUDGET}); largest: " + ", ".join(
        f"{p.relative_to(FIXTURES)} {p.stat().st_size}" for p in largest)
