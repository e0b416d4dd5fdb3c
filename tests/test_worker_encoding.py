"""Normalization and the blocks' data work (backbone.hf_vlm's processor and chat template,
fast.encode's and head.fast's FAST BPE, glue.state_text's prompt) run where batches are collated
(the DataLoader workers), chained in graph order, so the step receives tensors: the same losses
and weights as encoding in the step, and no processor or BPE call in the training process."""
import pickle
from pathlib import Path

import pytest
import torch

from graphvla.blocks.backbones import hf_vlm
from graphvla.blocks.glue.state_text import StateText
from graphvla.blocks.heads.fast_tokenizer import FASTTokenizer
from graphvla.compiler.compile import compile_graph
from graphvla.data.normalize import Normalizer
from graphvla.runners.train import Trainer
from graphvla.runners.train import dataio
from graphvla.runners.train.dataio import worker_encoders
from graphvla.spec.loader import load_spec
from vlm_samples import VLMSamples, vlm_bundle

TINY = Path(__file__).parent.parent / "graphvla" / "graphs" / "tiny"
STEPS = 3
VLM_SOURCES = {"images": "images", "text": "instruction"}
ENCODERS = {  # node -> its encoder's sources: a batch key, or (node, port) made by an earlier encoder
    "oft": {"vlm": VLM_SOURCES},
    "fast": {"vlm": VLM_SOURCES, "head": {"target": "actions", "mask": "actions_mask"}},
    "fast-lm": {"action_tokens": {"actions": "actions", "mask": "actions_mask"},
                "prompt": {"text": "instruction", "state": "state"},
                "vlm": {"images": "images", "text": ("prompt", "text"), "target_tokens": ("action_tokens", "tokens")}},
}


class TailSamples(VLMSamples):
    """Some chunks end early (mask False on their last steps): FAST must see them held at the last
    valid action, after the normalizer zeroed them."""

    def __getitem__(self, i):
        sample = super().__getitem__(i)
        sample["actions_mask"] = torch.arange(8) < 8 - 3 * (i % 3)
        return sample


def _spec(graph):
    return load_spec(str(TINY / f"{graph}.yaml"), [f"trainer.max_steps={STEPS}", "trainer.batch_size=2",
                                                   "trainer.warmup_steps=1", "trainer.num_workers=1",
                                                   "trainer.save_every=100"])


def _train_counting_main_process_calls(tmp_path, graph, monkeypatch, in_workers):
    torch.manual_seed(0)
    t = Trainer.from_spec(_spec(graph), vlm_bundle(TailSamples()), tmp_path / f"{graph}-{in_workers}", progress=False,
                          encode_in_workers=in_workers)
    calls = {"processor": 0, "bpe": 0}  # counted in this process only: a worker's calls happen in its own
    processor, bpe = hf_vlm.encode_cpu, FASTTokenizer.encode

    def counting_processor(*args, **kwargs):
        calls["processor"] += 1
        return processor(*args, **kwargs)

    def counting_bpe(*args, **kwargs):
        calls["bpe"] += 1
        return bpe(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(hf_vlm, "encode_cpu", counting_processor)
        m.setattr(FASTTokenizer, "encode", counting_bpe)
        history = t.run().history
    return [r["loss"] for r in history], calls, t


@pytest.mark.parametrize("graph", ["oft", "fast", "fast-lm"])
def test_data_work_runs_in_the_workers_with_the_same_losses_and_weights(tmp_path, monkeypatch, graph):
    before, in_step, t0 = _train_counting_main_process_calls(tmp_path, graph, monkeypatch, in_workers=False)
    after, in_main, t1 = _train_counting_main_process_calls(tmp_path, graph, monkeypatch, in_workers=True)
    fast = graph != "oft"
    assert in_step == {"processor": STEPS, "bpe": STEPS if fast else 0}  # what the step did before
    assert in_main == {"processor": 0, "bpe": 0}  # the step receives tensors
    assert t0.encoders["action"] == []
    assert {w.node: w.sources for w in t1.encoders["action"]} == ENCODERS[graph]
    assert after == before  # the same computation, wherever it runs: exactly equal
    w0, w1 = t0.cg.model.state_dict(), t1.cg.model.state_dict()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # so were the gradients


def test_encoders_run_in_graph_order():
    """fast-lm: the VLM's answers are fast.encode's tokens and its prompt glue.state_text's, made earlier in the worker."""
    cg = compile_graph(_spec("fast-lm"), device="cpu")
    nodes = [w.node for w in worker_encoders(cg, "action")]
    assert sorted(nodes[:2]) == ["action_tokens", "prompt"] and nodes[2] == "vlm"


def test_blocks_fed_by_blocks_that_run_in_the_step_encode_in_the_step(monkeypatch):
    """Without a worker prompt, fast-lm's VLM takes its text from a block of the step: it encodes
    there, while fast.encode (fed by graph inputs only) still runs in the worker."""
    monkeypatch.setattr(StateText, "batch_encoder", lambda self: None)
    cg = compile_graph(_spec("fast-lm"), device="cpu")
    assert [(w.node, w.sources) for w in worker_encoders(cg, "action")] == [
        ("action_tokens", ENCODERS["fast-lm"]["action_tokens"])]


def _rebuilt(value):
    """What DDP's and FSDP's input move does on the device the tensors are on: new lists and dicts, the same tensors."""
    if isinstance(value, dict):
        return {k: _rebuilt(v) for k, v in value.items()}
    return [_rebuilt(v) for v in value] if isinstance(value, list) else value


def test_the_encodings_hold_after_an_input_move_that_rebuilds_lists(tmp_path, monkeypatch):
    """The trainer hands the encodings over inside the wrapped module's forward, so a wrapper that
    rebuilds the batch's lists (the instructions) still gets the workers' encodings used."""
    spec = load_spec(str(TINY / "fast-lm.yaml"), ["trainer.batch_size=2", "trainer.num_workers=0"])
    t = Trainer.from_spec(spec, vlm_bundle(TailSamples()), tmp_path / "run", progress=False)
    batch = t.feeds["action"].next()
    encodings = dataio.take_encodings(batch, t.encoders["action"])
    batch = dataio.fit_batch(batch, *t.inputs["action"], "action")
    calls = []
    monkeypatch.setattr(hf_vlm, "encode_cpu", lambda *a, **k: calls.append(1))  # would fail the forward if called
    monkeypatch.setattr(FASTTokenizer, "encode", lambda *a, **k: calls.append(1))
    out = t.module("action", _rebuilt(batch), _rebuilt(encodings))
    assert calls == [] and torch.isfinite(out["loss"])


def test_an_encoding_is_used_only_for_the_object_it_was_made_from():
    cg = compile_graph(_spec("fast-lm"), device="cpu")
    block = cg.model["action_tokens"]
    chunk = torch.tanh(torch.randn(2, 8, 4))
    wrong = {"tokens": torch.zeros(2, 3, dtype=torch.long)}
    block.use_prepared(chunk.clone(), wrong)  # an equal chunk, but another object
    assert torch.equal(block(chunk)["tokens"], block.batch_encoder()(chunk)["tokens"])
    block.use_prepared(chunk, wrong)
    assert block(chunk)["tokens"] is wrong["tokens"]  # the very chunk: the worker's tokens
    assert not torch.equal(block(chunk)["tokens"], wrong["tokens"])  # taken once


def test_the_normalizer_pickles_with_the_same_numerics():
    ds = TailSamples()
    norm = Normalizer(vlm_bundle(ds).stats, {"actions": "q01_q99"})
    batch = {"actions": torch.stack([ds[i]["actions"] for i in range(4)]),
             "actions_mask": torch.stack([ds[i]["actions_mask"] for i in range(4)]),
             "state": torch.stack([ds[i]["state"] for i in range(4)])}
    a, b = norm.normalize(batch), pickle.loads(pickle.dumps(norm)).normalize(batch)
    assert all(torch.equal(a[k], b[k]) for k in batch)
    assert not torch.equal(a["actions"], batch["actions"])
