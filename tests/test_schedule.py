"""The learning-rate schedule (linear warmup, cosine to a floor) against its closed form, per step and
per param group, and across a save/load of the scheduler's state."""
from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from graphvla.runners.train.optim import build_scheduler

PEAKS = (1e-3, 2e-4, 5e-5)  # three param groups with their own lr, like blocks with train.lr


def expected_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """The multiplier of each group's own lr for optimizer step `step` (0-based): (step + 1) / warmup
    during warmup, then half a cosine from 1 down to `floor` at the last step, `total - 1`."""
    if step + 1 < warmup:
        return (step + 1) / warmup
    progress = (step + 1 - warmup) / max(total - warmup, 1)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2, 2))], "lr": lr, "name": f"g{i}"} for i, lr in enumerate(PEAKS)]
    return torch.optim.AdamW(groups, lr=PEAKS[0])


def trainer(warmup, total, floor):
    return {"warmup_steps": warmup, "max_steps": total, "min_lr_ratio": floor}


def lrs_over(opt, sched, steps):
    """Each group's lr before each of `steps` optimizer steps (what that step trains with), and after."""
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    seen.append([g["lr"] for g in opt.param_groups])
    return seen


def saved(state) -> dict:
    """`state` after torch.save and torch.load(weights_only=True), as a checkpoint stores it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("warmup,total,floor", [(4, 100, 0.1), (3, 16, 0.0), (0, 20, 0.1), (10, 10, 0.1),
                                                (0, 30, 1.0), (5, 30, 1.0)])
def test_every_group_follows_the_closed_form(warmup, total, floor):
    opt = optimizer()
    sched = build_scheduler(opt, trainer(warmup, total, floor))
    for step, lrs in enumerate(lrs_over(opt, sched, total)):
        for peak, lr in zip(PEAKS, lrs):
            assert lr == pytest.approx(peak * expected_factor(step, warmup, total, floor), rel=1e-12), step


def test_warmup_peak_floor_and_constant():
    opt = optimizer()
    sched = build_scheduler(opt, trainer(4, 100, 0.1))
    lrs = lrs_over(opt, sched, 100)
    assert lrs[0] == pytest.approx([p / 4 for p in PEAKS])  # warmup starts at lr / warmup_steps, not 0
    assert lrs[3] == pytest.approx(list(PEAKS))  # the peak
    assert lrs[51] == pytest.approx([0.55 * p for p in PEAKS])  # half way down the cosine
    assert lrs[99] == pytest.approx([0.1 * p for p in PEAKS])  # the last step: each group's floor, in proportion
    for g in range(len(PEAKS)):
        decay = [lrs[s][g] for s in range(3, 100)]
        assert all(a >= b for a, b in itertools.pairwise(decay))
    opt = optimizer()  # no warmup and min_lr_ratio 1: a constant lr
    sched = build_scheduler(opt, trainer(0, 30, 1.0))
    assert all(lrs == list(PEAKS) for lrs in lrs_over(opt, sched, 30))


def test_state_saved_mid_run_continues_with_identical_lrs():
    setting = trainer(3, 20, 0.1)
    opt = optimizer()
    reference = lrs_over(opt, build_scheduler(opt, setting), 20)
    for stop in (2, 7):  # in the warmup, in the cosine
        opt = optimizer()
        sched = build_scheduler(opt, setting)
        first = lrs_over(opt, sched, stop)
        opt_state, sched_state = saved(opt.state_dict()), saved(sched.state_dict())
        opt = optimizer()
        sched = build_scheduler(opt, setting)
        opt.load_state_dict(opt_state)
        sched.load_state_dict(sched_state)
        assert sched.last_epoch == stop + 1  # the schedule runs one step ahead of the optimizer
        assert first[:-1] + lrs_over(opt, sched, 20 - stop) == reference, stop

