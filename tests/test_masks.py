"""Masks everywhere: FAST sees chunk tails padded with the last valid action, glue.fuse carries
masks and head.mlp takes a masked mean (a sample's actions do not depend on its batch), mixture
statistics are per dimension over the datasets that have it, and a malformed FAST decode holds
still (the action input's declared `hold`, in dataset units) instead of a normalized zero."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fast_fixture import fit_tiny_fast
from graphvla.blocks.heads.common import hold_last_valid
from graphvla.compiler.compile import compile_graph
from graphvla.data.normalize import Normalizer
from graphvla.data.stats import compute_stats, pooled_stats
from graphvla.policy.policy import Policy


def test_hold_last_valid_repeats_the_last_valid_step():
    a = torch.arange(1.0, 13.0).view(2, 3, 2)  # [B=2, H=3, A=2]
    mask = torch.tensor([[True, True, False], [False, True, False]])
    out = hold_last_valid(a, mask)
    assert out[0].tolist() == [[1, 2], [3, 4], [3, 4]]
    assert out[1].tolist() == [[9, 10], [9, 10], [9, 10]]  # before the first valid step: the first valid one
    assert hold_last_valid(a, None) is a and torch.equal(hold_last_valid(a, torch.ones(2, 3, dtype=torch.bool)), a)


FAST_SPEC = """
graphvla: 1
name: fast-masks
inputs:
  actions:      {kind: action, dim: 4, horizon: 8, train_only: true, hold: [0.5, -0.25, 0.0, 1.0]}
  actions_mask: {kind: mask, shape: [8], train_only: true, optional: true}
  tokens:       {kind: tokens, shape: [33]}
blocks:
  enc:
    type: fast.encode
    in: {actions: inputs.actions, mask: inputs.actions_mask}
    with: {tokenizer: tok}
  dec:
    type: fast.decode
    in: {tokens: inputs.tokens, target: inputs.actions}
    with: {tokenizer: tok}
outputs:
  actions: dec.actions
  decode_ok: dec.decode_ok
"""


@pytest.fixture(scope="module")
def fast_graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast")
    fit_tiny_fast(d / "tok")
    (d / "spec.yaml").write_text(FAST_SPEC)
    return compile_graph(str(d / "spec.yaml"), device="cpu")


def chunk_with_tail(valid=5):
    """A smooth chunk, its copy with the normalizer's zeros past step `valid`, and the mask."""
    t = torch.linspace(0, 1, 8)[:, None]
    chunk = (0.6 * torch.sin(3 * t + torch.arange(4.0)[None]))[None]  # [1, 8, 4] in [-1, 1]
    mask = torch.arange(8)[None] < valid
    zeroed = chunk * mask[..., None]
    held = chunk.clone()
    held[:, valid:] = chunk[:, valid - 1]
    return zeroed, held, mask


def build(cls, params, ports, folder):
    from graphvla.blocks.base import BuildContext, PortInfo

    infos = {p: PortInfo(kind, shape, source=f"inputs.{p}") for p, (kind, shape) in ports.items()}
    return cls(params, infos, BuildContext("block", spec_dir=folder))


def test_fast_encode_sees_the_tail_padded_with_the_last_valid_action(tmp_path):
    from graphvla.blocks.fast import FASTEncode

    fit_tiny_fast(tmp_path / "tok")
    enc = build(FASTEncode, {"tokenizer": "tok"}, {"actions": ("action", (2, 8, 4)), "mask": ("mask", (2, 8))}, tmp_path)
    zeroed, held, mask = chunk_with_tail()
    step = enc.processor_step("enc", {"actions": "actions", "mask": "actions_mask"}).run  # fast.encode's BPE
    assert torch.equal(step(actions=zeroed, mask=mask)["tokens"], step(actions=held)["tokens"])
    assert not torch.equal(step(actions=zeroed)["tokens"], step(actions=held)["tokens"])  # zeros are other tokens


def test_head_fast_learns_the_held_tail_not_the_zeros(tmp_path):
    from graphvla.blocks.heads.fast import FASTHead

    fit_tiny_fast(tmp_path / "tok")
    torch.manual_seed(0)
    head = build(FASTHead, {"tokenizer": "tok", "vocab_size": 256, "width": 16, "heads": 2, "layers": 1},
                 {"context": ("hidden", (2, 3, 8)), "target": ("action", (2, 8, 4)), "mask": ("mask", (2, 8))}, tmp_path)
    zeroed, held, mask = chunk_with_tail()
    context = torch.randn(1, 3, 8)
    step = head.processor_step("head", {"target": "actions", "mask": "actions_mask"}).run  # its teacher-forcing ids
    masked = head(context=context, **step(target=zeroed, mask=mask))["loss"]
    assert torch.equal(masked, head(context=context, **step(target=held))["loss"])
    assert not torch.equal(masked, head(context=context, **step(target=zeroed))["loss"])


def test_a_malformed_decode_holds_the_declared_action_in_dataset_units(fast_graph):
    stats = {"actions": compute_stats(np.random.default_rng(0).normal([2.0, -1.0, 0.5, 3.0], 0.7, (200, 4)))}
    policy = Policy(fast_graph, Normalizer(stats, {"actions": "q01_q99"}))
    bad = np.full(33, 10**6, dtype=np.int64)  # ids outside the vocabulary
    out = policy.infer({"tokens": bad})
    assert not out["decode_ok"]
    np.testing.assert_allclose(out["actions"], np.tile([0.5, -0.25, 0.0, 1.0], (8, 1)), atol=1e-6)
    # without a declared hold the chunk holds still at zeros in dataset units, not normalized zeros
    spec = FAST_SPEC.replace(", hold: [0.5, -0.25, 0.0, 1.0]", "")
    plain = Policy(_with_spec(fast_graph, spec), Normalizer(stats, {"actions": "q01_q99"}))
    np.testing.assert_allclose(plain.infer({"tokens": bad})["actions"], np.zeros((8, 4)), atol=1e-6)


def _with_spec(cg, text):
    """Compile `text` next to cg's spec file (its tokenizer folder)."""
    from pathlib import Path

    path = Path(cg.spec.file).parent / "spec-no-hold.yaml"
    path.write_text(text)
    return compile_graph(str(path), device="cpu")


def test_a_hold_of_the_wrong_width_names_the_input(fast_graph):
    from pathlib import Path

    from graphvla.errors import SpecError

    path = Path(fast_graph.spec.file).parent / "spec-bad-hold.yaml"
    path.write_text(FAST_SPEC.replace("hold: [0.5, -0.25, 0.0, 1.0]", "hold: [0.5]"))
    with pytest.raises(SpecError, match=r"inputs\.actions\.hold has 1 values but the action dim is 4"):
        compile_graph(str(path), device="cpu")


MLP_SPEC = """
graphvla: 1
name: mlp-masks
inputs:
  instruction: {kind: text}
  state:       {kind: state, dim: 3}
  actions:     {kind: action, dim: 2, horizon: 3, train_only: true}
blocks:
  language:
    type: encoder.text
    in: {text: inputs.instruction}
    with: {width: 16, layers: 1, heads: 2}
  fuse:
    type: glue.fuse
    in: {a: language.hidden, a_mask: language.mask, c: inputs.state}
    with: {width: 16}
  head:
    type: head.mlp
    in: {context: fuse.hidden, context_mask: fuse.mask, state: inputs.state, target: inputs.actions}
    with: {hidden: 32}
losses:
  action: {from: head.loss}
outputs:
  actions: head.actions
"""


def test_fuse_carries_masks_and_mlp_outputs_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    cg = compile_graph(MLP_SPEC, device="cpu")
    cg.model.eval()
    short, long = "push", "put the bowl on the plate then close the drawer"
    state = torch.randn(2, 3)
    fused = cg.model["fuse"](a=torch.randn(2, 5, 16), a_mask=torch.tensor([[1, 1, 0, 0, 0], [1] * 5]).bool(),
                             c=state)
    assert fused["mask"].tolist() == [[True, True, False, False, False, True], [True] * 6]  # the state token is real
    with torch.no_grad():
        alone = cg.infer(**cg.feed({"instruction": [short], "state": state[:1]}))["actions"]
        batched = cg.infer(**cg.feed({"instruction": [short, long], "state": state}))["actions"]
    # tolerance: the same sums over 4 vs 48 positions (zeros added) may round differently in the last bit
    torch.testing.assert_close(batched[:1], alone, rtol=0, atol=1e-6)
    # without the mask the padded tokens leak into the mean
    loose = compile_graph(MLP_SPEC.replace(", context_mask: fuse.mask", ""), device="cpu")
    loose.model.load_state_dict(cg.model.state_dict())
    loose.model.eval()
    with torch.no_grad():
        a = loose.infer(**loose.feed({"instruction": [short], "state": state[:1]}))["actions"]
        b = loose.infer(**loose.feed({"instruction": [short, long], "state": state}))["actions"]
    assert (a - b[:1]).abs().max() > 1e-3


def test_mixture_statistics_are_per_dimension_over_the_datasets_that_have_it():
    rng = np.random.default_rng(0)
    wide = rng.normal(5.0, 2.0, (300, 4))
    narrow = rng.normal(-1.0, 0.5, (100, 3))  # a robot without the 4th dim
    stats = pooled_stats([wide, narrow], 4)
    both = compute_stats(np.concatenate([wide[:, :3], narrow]))
    only = compute_stats(wide[:, 3:])
    for k in both:
        np.testing.assert_allclose(stats[k][:3], both[k], rtol=1e-12)
        np.testing.assert_allclose(stats[k][3:], only[k], rtol=1e-12)
    assert stats["mean"][3] == pytest.approx(5.0, abs=0.3)  # zero-padding would pull it to 3.75
    # full-width datasets: exactly the statistics of their concatenation
    assert pooled_stats([wide, wide[:50]], 4) == compute_stats(np.concatenate([wide, wide[:50]]))
    with pytest.raises(ValueError, match="5 dims but the port has 4"):
        pooled_stats([rng.normal(size=(4, 5))], 4)
