"""FAST decoded through the VLM (backbone.hf_vlm with action_vocab, fast.encode, fast.decode) on
the three tiny VLM families: the LM loss is the transformers loss on the action tokens; after
overfitting, greedy constrained decoding gives back every token, a batch decodes like its samples
one by one, and the chunks come back within the tokenizer's bound; bad inputs name their field."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import graphvla
from graphvla.blocks.backbones.hf_vlm import HFVLM, OnlyTokens
from graphvla.blocks.base import BuildContext, PortError, PortInfo
from graphvla.blocks.fast import FASTDecode, FASTEncode
from graphvla.processors.fast_tokenizer import FASTTokenizer
from graphvla.errors import SpecError
from graphvla.compiler.validate import validate_graph
from fast_fixture import smooth_chunks
from vlm_samples import through_step
from test_backbone_hf import FAMILIES  # SmolVLM skips without num2words

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1] / "graphvla" / "graphs"
H, A, B = 8, 4, 4
TEXTS = ["pick up the red cube", "open the drawer", "reach", "press the button now"]  # prompts of different lengths


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast_lm") / "tok"
    FASTTokenizer(H, A, scale=10, vocab_size=128).fit(smooth_chunks(500, H, A)).save(d)
    return d


def make_vlm(family, vocab, max_new_tokens=H * A + 1, **extra):
    infos = {"images": PortInfo("image", (B, 1, 3, 32, 32)), "text": PortInfo("text", None),
             "target_tokens": PortInfo("tokens", (B, H * A), torch.long)}
    params = {"tiny": family, "action_vocab": vocab, "max_new_tokens": max_new_tokens, **extra}
    return HFVLM(params, infos, BuildContext("vlm"))


def make_end(cls, tokenizer_dir):
    port = "actions" if cls is FASTEncode else "target"
    infos = {port: PortInfo("action", (B, H, A), source="inputs.actions")}
    if cls is FASTDecode:
        infos["tokens"] = PortInfo("tokens", (B, H * A + 1), torch.long, source="vlm.generated")
    return cls({"tokenizer": tokenizer_dir.name}, infos, BuildContext(cls.type_name, spec_dir=tokenizer_dir.parent))


def fast_tokens(encode, chunks):
    """fast.encode's tokens of the chunks: made by its processor step."""
    return encode.processor_step("action_tokens", {"actions": "actions"}).run(actions=chunks)["tokens"]


def batch(seed=0):
    images = torch.rand(B, 1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return images, list(TEXTS), torch.from_numpy(smooth_chunks(B, H, A, seed=5 + seed).astype(np.float32))


@pytest.mark.parametrize("family", FAMILIES)
def test_lm_loss_is_the_transformers_loss_on_the_action_tokens(family, tokenizer_dir):
    vlm = make_vlm(family, 128).eval()
    base = vlm.action_base
    assert vlm.model.get_input_embeddings().weight.shape[0] == base + 128
    assert vlm.model.get_output_embeddings().weight.shape[0] == base + 128  # the tied LM head grew too
    images, texts, chunks = batch()
    tokens = fast_tokens(make_end(FASTEncode, tokenizer_dir), chunks)
    with torch.no_grad():
        out = through_step(vlm, images=images, text=texts, target_tokens=tokens)
    eos = vlm.processor.tokenizer.eos_token_id
    for i, row in enumerate(tokens.tolist()):
        want = [base + t for t in row if t >= 0] + [eos]
        assert [t for t in out["labels"][i].tolist() if t != -100] == want
    # the loss transformers computes is next-token cross-entropy on exactly those labels
    shifted = F.cross_entropy(out["logits"][:, :-1].flatten(0, 1).float(), out["labels"][:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out["lm_loss"], shifted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_overfits_then_generates_every_token_and_decodes_the_chunks(family, tokenizer_dir):
    torch.manual_seed(0)
    encode, decode = make_end(FASTEncode, tokenizer_dir), make_end(FASTDecode, tokenizer_dir)
    vlm = make_vlm(family, 128)
    images, texts, chunks = batch()
    tokens = fast_tokens(encode, chunks)
    opt = torch.optim.AdamW(vlm.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = through_step(vlm, images=images, text=texts, target_tokens=tokens)["lm_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:3]), np.mean(losses[-5:])
    vlm.eval()
    out = through_step(vlm, "predict", images=images, text=texts)
    generated = out["generated"]
    assert generated.shape == (B, H * A + 1) and generated.dtype == torch.long
    assert ((generated >= -1) & (generated < 128)).all()
    for row, want in zip(generated.tolist(), tokens.tolist()):
        assert [t for t in row if t >= 0] == [t for t in want if t >= 0]
    # one by one (no padding) equals the left-padded batch
    for i in range(B):
        alone = through_step(vlm, "predict", images=images[i:i + 1], text=texts[i:i + 1])["generated"]
        assert torch.equal(alone[0], generated[i]), i
    decoded = decode(generated)
    err = (decoded["actions"] - chunks).abs().max().item()
    bound = decode.tokenizer.error_bound()
    print(f"{family}: LM loss {first:.3f} -> {last:.4f} ({first / last:.0f}x); decode error {err:.3f} (bound {bound:.3f})")
    assert first / last >= 10
    assert decoded["decode_ok"].all() and err <= bound + 1e-5
    # the prompt's features come with the generation (from the prefill)
    assert out["hidden"].shape[0] == B and out["mask"].shape == out["hidden"].shape[:2]


def test_decoding_is_constrained_to_action_tokens_and_the_end():
    allowed = torch.full((10,), float("-inf"))
    allowed[[3, 7, 8]] = 0
    scores = torch.randn(5, 12) * 10
    scores[:, 11] = 1e4  # a padded LM head column beyond the vocabulary must never win either
    only = OnlyTokens(allowed)
    picked = only(None, scores).argmax(-1)
    assert set(picked.tolist()) <= {3, 7, 8}
    # the mask widened and moved for the first call serves every later token
    assert torch.equal(only(None, scores * -1).argmax(-1), (-scores[:, [3, 7, 8]]).argmax(-1).apply_(lambda j: [3, 7, 8][j]))


def test_malformed_generations_decode_to_zeros_with_a_warning(tokenizer_dir, caplog):
    decode = make_end(FASTDecode, tokenizer_dir)
    good = decode.tokenizer.encode(smooth_chunks(1, H, A, seed=3))[0]
    rows = [good, [], [5] * (H * A + 1), [127, 126]]
    tokens = torch.full((len(rows), H * A + 1), -1)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r)
    with caplog.at_level(logging.WARNING):
        out = decode(tokens)
    assert out["decode_ok"].tolist() == [True, False, False, False]
    assert not out["actions"][1:].any() and out["actions"][0].abs().max() > 0.05
    assert "3 of 4 samples" in caplog.text and "fast.decode" in caplog.text


def test_bad_targets_name_the_field(tokenizer_dir):
    vlm = make_vlm("qwen3_vl", 16, max_new_tokens=5)
    images, texts, _ = batch()
    with pytest.raises(ValueError, match="with.action_vocab is 16"):
        through_step(vlm, images=images, text=texts, target_tokens=torch.tensor([[3, 40, -1]] * B))
    with pytest.raises(ValueError, match="with.max_new_tokens is 5"):
        through_step(vlm, images=images, text=texts, target_tokens=torch.tensor([[1, 2, 3, 4, 5]] * B))
    infos = {"images": PortInfo("image", (B, 1, 3, 32, 32)), "text": PortInfo("text", None),
             "target_text": PortInfo("text", None), "target_tokens": PortInfo("tokens", (B, 4), torch.long)}
    with pytest.raises(PortError) as e:
        HFVLM({"tiny": "qwen3_vl", "action_vocab": 16}, infos, BuildContext("vlm"))
    assert e.value.port == "target_tokens"


def test_a_loss_cannot_use_what_only_inference_generates():
    with pytest.raises(SpecError, match="is a tokens port, expected a loss port"):
        validate_graph("tiny/fast-lm", ["losses.action.from=vlm.generated"])
    # a loss from a block that is fed the generated tokens: named with the edge it comes through
    with pytest.raises(SpecError) as e:
        validate_graph("tiny/fast-lm", ["blocks.judge={type: head.mlp, in: {context: vlm.hidden, target: head.actions}}",
                                        "losses.action.from=judge.loss"])
    msg = e.value.format()
    assert "loss 'action' needs 'vlm.generated' (through judge.loss)" in msg and "only at inference" in msg and "losses.action.from" in msg
    # without action_vocab the VLM has no generated port: the error lists the ones it has
    with pytest.raises(SpecError, match="has no output port 'generated'"):
        validate_graph("tiny/fast-lm", ["blocks.vlm.with={tiny: qwen3_vl}",
                                        "blocks.vlm.in={images: inputs.images, text: prompt.text}"])


def test_full_size_graphs_compile_with_the_added_tokens():
    from test_graphs import BACKBONE_PARAMS

    widths = {"qwen3vl": 2560, "qwen25vl": 2048}
    for backbone, width in widths.items():
        cg = graphvla.compile_graph(ROOT / "fullsize" / f"{backbone}-fast-lm.yaml")
        vlm = cg.model["vlm"]
        # tied embeddings: 1024 new rows once, shared by the input embedding and the LM head
        assert cg.param_counts()["vlm"][0] == BACKBONE_PARAMS[backbone] + 1024 * width
        assert vlm.model.get_output_embeddings().weight is vlm.model.get_input_embeddings().weight
        assert cg.shapes[("vlm", "generated")] == ("B", 57)
        assert cg.shapes[("head", "actions")] == ("B", 8, 7)


def test_train_on_recorded_metaworld_then_load_and_infer(tmp_path, metaworld_data):
    """graphvla train on graphvla/graphs/tiny/fast-lm.yaml with recorded data; the LM loss falls and the
    loaded policy returns a chunk and decode_ok for an observation."""
    import json

    from click.testing import CliRunner

    from graphvla.cli import main

    run = tmp_path / "run"
    args = ["train", str(ROOT / "tiny" / "fast-lm.yaml"), "--data", str(metaworld_data), "-o", str(run), "--no-progress"]
    for kv in ["trainer.max_steps=30", "trainer.batch_size=8", "trainer.warmup_steps=3", "trainer.save_every=100"]:
        args += ["--set", kv]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    state = json.loads((run / "checkpoints/step_0000030/trainer_state.json").read_text())
    losses = [r["losses"]["action"] for r in state["history_tail"]]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    policy = graphvla.load_policy(run)
    out = policy.infer({"images": np.zeros((128, 128, 3), np.uint8), "instruction": "reach the goal", "state": np.zeros(4, np.float32)})
    assert out["actions"].shape == (8, 4) and np.isfinite(out["actions"]).all()
    assert out["decode_ok"].dtype == bool and out["decode_ok"].size == 1


def test_state_goes_into_the_prompt_as_bins():
    from graphvla.blocks.base import ParamError
    from graphvla.blocks.glue.state_text import StateText

    def make(**params):
        block = StateText(params, {"text": PortInfo("text", None), "state": PortInfo("state", (2, 3))}, BuildContext("prompt"))
        step = block.processor_step("prompt", {"text": "instruction", "state": "state"})  # the prompts are its step's
        return lambda text, state: step.run(text=text, state=state)

    block = make()
    state = torch.tensor([[-1.0, 0.0, 1.0], [-5.0, 0.999, -0.0041]])
    out = block(["reach", "push"], state)["text"]
    # 256 bins over [-1, 1]: -1 -> 0, 0 -> 128, 1 -> 255 (the top edge is in the last bin); clipped outside
    assert out == ["reach, State: 0 128 255;", "push, State: 0 255 127;"]
    history = torch.stack([torch.zeros(2, 3), state], dim=1)  # [B, history, D]: the newest step is written
    assert block(["reach", "push"], history)["text"] == out
    assert make(bins=4, template="{state} | {text}")(["go"], torch.tensor([[-0.6, 0.2, 0.9]]))["text"] == ["0 2 3 | go"]
    for params, key in [({"template": "{text} only"}, "template"), ({"template": "{text} {state} {x}"}, "template"),
                        ({"low": 1.0, "high": 0.0}, "high")]:
        with pytest.raises(ParamError) as e:
            make(**params)
        assert e.value.key == key


def test_repair_cuts_or_pads_the_highest_frequencies(tokenizer_dir):
    """on_malformed: repair turns a sequence with a wrong coefficient count into the chunk with its
    highest frequencies cut or zeroed, not zeros; decode_ok still reports it."""
    zeros = make_end(FASTDecode, tokenizer_dir)
    repair = FASTDecode({"tokenizer": tokenizer_dir.name, "on_malformed": "repair"},
                        {"target": PortInfo("action", (B, H, A)), "tokens": PortInfo("tokens", (B, 33), torch.long)},
                        BuildContext("head", spec_dir=tokenizer_dir.parent))
    chunk = smooth_chunks(1, H, A, seed=7).astype(np.float32)
    good = zeros.tokenizer.encode(chunk)[0]
    rows = [good, good[:-1], good + good[-1:], [127] * 3 + [-5]]  # exact, one short, one long, garbage
    tokens = torch.full((len(rows), 40), -1)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor([t if t >= 0 else 10_000 for t in r])
    plain, fixed = zeros(tokens), repair(tokens)
    assert plain["decode_ok"].tolist() == fixed["decode_ok"].tolist() == [True, False, False, False]
    assert not plain["actions"][1:].any()
    target = torch.from_numpy(chunk[0])
    errors = [(fixed["actions"][i] - target).abs().max().item() for i in range(3)]
    assert errors[0] <= zeros.tokenizer.error_bound() + 1e-5
    assert errors[1] < 0.5 * target.abs().max().item() and errors[2] < 0.5 * target.abs().max().item(), errors
    assert not fixed["actions"][3].any()  # ids outside the vocabulary cannot be repaired
