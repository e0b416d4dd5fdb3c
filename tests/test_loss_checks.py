"""The non-finite loss check without a host sync every step: `run()` reads the losses on the host
only at logging steps, before every save and at the end (one read for all steps since the last),
and still saves no bad weights and names the first bad step."""
import pytest
import torch
from safetensors.torch import load_file

from graphvla.data.api import DataBundle, collate
from graphvla.data.normalize import Normalizer
from graphvla.data.sampler import StreamSampler
from graphvla.runners.train import NonFiniteLossError, Trainer
from graphvla.policy import checkpoint as C
from graphvla.spec.loader import load_spec
from train_doubles import TINY_SPEC, SyntheticActions, port_stats

torch.set_num_threads(1)


def _trainer(tmp_path, overrides, nan_at=None):
    spec = load_spec(TINY_SPEC, overrides)
    ds = SyntheticActions(48, nan_at=nan_at)
    stats = port_stats(ds, ["state", "actions"])
    norm = Normalizer(stats, spec.section("trainer")["normalization"])
    return Trainer.from_spec(spec, DataBundle({"action": ds}, stats), tmp_path / "run", normalizer=norm, collate=collate,
                             progress=False), ds


def test_losses_are_read_once_per_log_interval_and_fill_every_record(tmp_path, monkeypatch):
    t, _ = _trainer(tmp_path, ["trainer.max_steps=10", "trainer.log_every=5", "trainer.save_every=10"])
    reads = []
    real = Trainer.check_pending

    def counting(self, checked_at=None):
        if self._pending:
            reads.append((self.step, len(self._pending)))
        return real(self, checked_at)

    monkeypatch.setattr(Trainer, "check_pending", counting)
    result = t.run()
    # before step 5: steps 1-4 in one read; step 5 itself (checked before its optimizer step); same for 6-10
    assert reads == [(4, 4), (5, 1), (9, 4), (10, 1)]
    assert [r["step"] for r in result.history] == list(range(1, 11))
    assert all(isinstance(r["loss"], float) and set(r["losses"]) == {"action"} for r in result.history)


def test_a_nan_between_checks_is_named_and_never_saved(tmp_path):
    t, ds = _trainer(tmp_path, ["trainer.max_steps=40", "trainer.log_every=7", "trainer.save_every=7"], nan_at=5)
    it = iter(StreamSampler(ds, seed=0))
    bad = next(s for s in range(1, 41) if 5 in [next(it) for _ in range(t.layout.per_device["action"])])
    with pytest.raises(NonFiniteLossError) as err:
        t.run()
    assert err.value.step == bad and "loss 'action'" in str(err.value) and "nan" in str(err.value)
    if bad % 7:  # trained without a check: found by the next one, before anything is saved
        assert err.value.checked_at == (bad // 7 + 1) * 7 and "no checkpoint after step" in str(err.value)
    latest = C.latest_checkpoint(tmp_path / "run")
    saved = [int(p.name.split("_")[1]) for p in C.step_dirs(C.checkpoints_dir(tmp_path / "run"))]
    assert all(s < bad for s in saved)
    if latest is not None:
        assert all(torch.isfinite(v).all() for v in load_file(str(latest / "model.safetensors")).values())
