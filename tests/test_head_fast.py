"""head.fast: overfits with teacher forcing and decodes the chunks back; malformed tokens give
zeros + decode_ok False + a warning; a missing tokenizer is a ParamError naming `tokenizer`."""
import logging

import numpy as np
import pytest
import torch
from conftest import graph_text

import graphvla
from graphvla.blocks.base import BuildContext, ParamError, PortInfo
from graphvla.blocks.heads.fast import FASTHead, decode_tokens
from graphvla.processors.fast_tokenizer import FASTTokenizer
from graphvla.errors import SpecError

N, T, D, H, A = 16, 6, 16, 8, 3



def smooth_chunks(n, seed):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, H)[None, :, None]
    return (rng.uniform(0.2, 0.9, (n, 1, A)) * np.sin(2 * np.pi * rng.uniform(0.2, 1.5, (n, 1, A)) * t
                                                       + rng.uniform(0, 2 * np.pi, (n, 1, A)))).astype(np.float32)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast") / "tok"
    FASTTokenizer(H, A, scale=10, vocab_size=128).fit(smooth_chunks(1000, 0)).save(d)
    return d


def make_head(params, spec_dir, meta=False, with_state=False):
    infos = {"context": PortInfo("hidden", (N, T, D)), "target": PortInfo("action", (N, H, A))}
    if with_state:
        infos["state"] = PortInfo("state", (N, 4))
    return FASTHead(params, infos, BuildContext("head", meta=meta, spec_dir=spec_dir))


@pytest.mark.parametrize("seed", [0, 1])
def test_overfits_and_decodes_the_chunks(tokenizer_dir, seed):
    torch.manual_seed(seed)
    head = make_head({"tokenizer": "tok", "vocab_size": 128, "width": 32, "layers": 1}, tokenizer_dir.parent, with_state=True)
    context, state = torch.randn(N, T, D), torch.randn(N, 4)
    target = torch.from_numpy(smooth_chunks(N, 100 + seed))
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    tokens = head.processor_step("head", {"target": "actions"}).run(target=target)  # the teacher-forcing ids
    for _ in range(150):
        loss = head(context=context, state=state, **tokens)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    head.eval()
    out = head.predict(context=context, state=state)
    err = (out["actions"] - target).abs().max().item()
    print(f"fast cross-entropy {first:.3f} -> {last:.4f} ({first / last:.0f}x); greedy decode max error {err:.3f} "
          f"(tokenizer bound {head.tokenizer.error_bound():.3f})")
    assert first / last >= 10
    assert out["actions"].shape == (N, H, A) and out["decode_ok"].all()
    assert err <= head.tokenizer.error_bound() + 1e-5  # every token right: only the quantization error is left


def test_malformed_tokens_never_crash(tokenizer_dir, caplog):
    torch.manual_seed(0)
    head = make_head({"tokenizer": "tok", "vocab_size": 128, "width": 32, "layers": 1}, tokenizer_dir.parent).eval()
    tok = head.tokenizer
    good = tok.encode(smooth_chunks(1, 5))[0]
    garbage = [good, [127, 500, -3], good[:2], good + good, []]
    with caplog.at_level(logging.WARNING):
        actions, ok = decode_tokens(head, garbage)
    assert ok.tolist() == [True, False, False, False, False]
    assert not actions[1:].any() and actions[0].abs().max() > 0.05
    assert "4 of 5 samples" in caplog.text
    # a decoder that always emits a two-character token overruns H*A values in every sample
    merged = next(i for i in range(tok.vocab_size) if len(tok.bpe.id_to_token(i)) >= 2)
    with torch.no_grad():
        head.logits.weight.zero_()
        head.logits.bias.fill_(-10.0)
        head.logits.bias[merged] = 10.0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = head.predict(context=torch.randn(3, T, D))
    assert out["decode_ok"].tolist() == [False] * 3
    assert out["actions"].shape == (3, H, A) and not out["actions"].any()
    assert "malformed" in caplog.text


def test_missing_or_mismatched_tokenizer_is_a_param_error(tokenizer_dir, tmp_path):
    for params in ({}, {"tokenizer": "nowhere"}):
        with pytest.raises(ParamError, match="graphvla fast-fit") as e:
            make_head(params, tmp_path)
        assert e.value.key == "tokenizer"
    with pytest.raises(ParamError) as e:
        make_head({"tokenizer": str(tokenizer_dir), "vocab_size": 64}, tmp_path)
    assert e.value.key == "vocab_size"
    other = tmp_path / "other"
    FASTTokenizer(4, A, vocab_size=128).fit(smooth_chunks(200, 1)[:, :4]).save(other)
    with pytest.raises(ParamError, match=r"\[4, 3\]") as e:
        make_head({"tokenizer": str(other)}, tmp_path)
    assert e.value.key == "tokenizer"


def test_meta_build_needs_no_tokenizer_and_real_build_names_the_field(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text(graph_text("tiny/mlp", f"inputs.actions={{kind: action, dim: {A}, horizon: {H}, train_only: true}}",
                               "blocks.head={type: head.fast, in: {context: fuse.hidden, target: inputs.actions}, "
                               "with: {tokenizer: missing_dir, vocab_size: 300, width: 32}}"))
    cg = graphvla.compile_graph(path)  # meta: sized from with.vocab_size, the folder is not read
    assert cg.model["head"].logits.out_features == 301
    assert cg.shapes[("head", "actions")] == ("B", H, A)
    with pytest.raises(SpecError) as e:
        graphvla.compile_graph(path, device="cpu")
    msg = e.value.format()
    assert "blocks.head.with.tokenizer" in msg and "graphvla fast-fit" in msg


def test_cached_decoding_matches_full_recompute(tokenizer_dir):
    """Greedy decoding reuses the earlier positions' states; the logits equal recomputing the
    whole causal sequence."""
    torch.manual_seed(0)
    head = make_head({"tokenizer": "tok", "vocab_size": 128, "width": 32, "layers": 2}, tokenizer_dir.parent).eval()
    context = torch.randn(2, T, D)
    memory, pad = head.memory(context, None, None)
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        full = head.step_logits(ids, memory, pad)
        cache = [None] * len(head.decoder)
        first = head.step_logits(ids[:, :3], memory, pad, cache)  # a prefix at once, then one token at a time
        steps = [head.step_logits(ids[:, i:i + 1], memory, pad, cache) for i in range(3, 7)]
    torch.testing.assert_close(torch.cat([first] + steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # changing the token at position 5 never changes the logits before it (causality)
    other = ids.clone()
    other[:, 5] = (other[:, 5] + 1) % 128
    with torch.no_grad():
        changed = head.step_logits(other, memory, pad)
    torch.testing.assert_close(changed[:, :5], full[:, :5])
    assert (changed[:, 5:] - full[:, 5:]).abs().max() > 1e-4
