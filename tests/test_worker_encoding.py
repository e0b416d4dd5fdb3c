"""The HF processor and chat template of backbone.hf_vlm run where batches are collated (the
DataLoader workers), so the step receives tensors: the same losses as encoding in the step, and
no processor call in the training process while it trains."""
from pathlib import Path

import pytest
import torch

from graphvla.blocks.backbones import hf_vlm
from graphvla.runners.train import Trainer
from graphvla.runners.train.dataio import PREPARED, worker_encoders
from graphvla.spec.loader import load_spec
from vlm_samples import VLMSamples, vlm_bundle

TINY = Path(__file__).parent.parent / "graphvla" / "graphs" / "tiny"


def _losses_and_main_process_encodings(tmp_path, name, monkeypatch, in_workers):
    spec = load_spec(str(TINY / "oft.yaml"), ["trainer.max_steps=3", "trainer.batch_size=2", "trainer.warmup_steps=1",
                                              "trainer.num_workers=1", "trainer.save_every=100"])
    t = Trainer(spec, vlm_bundle(VLMSamples()), tmp_path / name, progress=False, encode_in_workers=in_workers)
    calls = []
    real = hf_vlm.encode_cpu

    def counting(*args, **kwargs):
        calls.append(1)  # counted in this process only: a worker's calls happen in its own
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_vlm, "encode_cpu", counting)
    history = t.run().history
    monkeypatch.setattr(hf_vlm, "encode_cpu", real)
    return [r["loss"] for r in history], len(calls), t


def test_processor_runs_in_the_workers_with_the_same_losses(tmp_path, monkeypatch):
    torch.manual_seed(0)
    before, in_step, _ = _losses_and_main_process_encodings(tmp_path, "step", monkeypatch, in_workers=False)
    torch.manual_seed(0)
    after, in_main, t = _losses_and_main_process_encodings(tmp_path, "workers", monkeypatch, in_workers=True)
    assert in_step == 3 and in_main == 0  # the step no longer runs the processor
    assert [(n, o, ports) for n, o, ports, _ in t.encoders["action"]] == [
        ("vlm", "vlm", {"images": "images", "text": "instruction"})]
    assert after == pytest.approx(before, rel=1e-6, abs=1e-7)


def test_blocks_fed_by_other_blocks_encode_in_the_step():
    """tiny/fast-lm's VLM takes FAST tokens and a prompt made by other blocks: nothing to do in workers."""
    from graphvla.compiler.compile import compile_graph

    cg = compile_graph(load_spec(str(TINY / "fast-lm.yaml")), device="cpu")
    assert worker_encoders(cg, "action") == []
    assert PREPARED.endswith("/")
