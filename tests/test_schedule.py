"""The learning-rate schedule (linear warmup, cosine to a floor) is a pure function of the optimizer
step: against its closed form per step and per param group, at hand-computed points, and equal to
the last bit to the transformers LambdaLR that runs trained before used (their checkpoints resume
with the same lrs). A resumed run's lrs are tested in test_train.py."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from graphvla.runners.train.optim import block_param_groups, build_optimizer, lr_at, lr_factor, set_lrs

PEAKS = (1e-3, 2e-4, 5e-5)  # three param groups with their own lr, like blocks with train.lr


def expected_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """The multiplier of each group's own lr for optimizer step `step` (0-based): (step + 1) / warmup
    during warmup, then half a cosine from 1 down to `floor` at the last step, `total - 1`."""
    if step + 1 < warmup:
        return (step + 1) / warmup
    progress = (step + 1 - warmup) / max(total - warmup, 1)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer():
    """AdamW over three blocks whose train.lr are PEAKS, built as the trainer builds it."""
    model = torch.nn.ModuleDict({f"b{i}": torch.nn.Linear(2, 2) for i in range(len(PEAKS))})
    block_train = {f"b{i}": {"lr": lr} for i, lr in enumerate(PEAKS)}
    return build_optimizer(block_param_groups(model, block_train, {"lr": 1.0, "weight_decay": 0.0}),
                           {"lr": 1.0, "betas": [0.9, 0.95], "weight_decay": 0.0})


def trainer(warmup, total, floor):
    return {"warmup_steps": warmup, "max_steps": total, "min_lr_ratio": floor}


def lrs_over(opt, setting, steps):
    """Each group's lr that each of `steps` optimizer steps trains with (set as the trainer sets it)."""
    seen = []
    for step in range(steps):
        set_lrs(opt, step, setting)
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
    return seen


@pytest.mark.parametrize("warmup,total,floor", [(4, 100, 0.1), (3, 16, 0.0), (0, 20, 0.1), (10, 10, 0.1),
                                                (0, 30, 1.0), (5, 30, 1.0)])
def test_every_group_follows_the_closed_form(warmup, total, floor):
    opt = optimizer()
    peaks = [g["initial_lr"] for g in opt.param_groups]
    assert sorted(set(peaks)) == sorted(PEAKS)  # a decayed and a no_decay group per block, each at its peak
    for step, lrs in enumerate(lrs_over(opt, trainer(warmup, total, floor), total)):
        for peak, lr in zip(peaks, lrs):
            assert lr == pytest.approx(peak * expected_factor(step, warmup, total, floor), rel=1e-12), step


def test_warmup_end_midpoint_and_end_by_hand():
    """warmup 4 of 100 steps, floor 0.1. Step s trains at factor f(s + 1): the first step at 1/4
    (not 0), step 3 ends the warmup at the peak, step 51 is half way down the cosine
    ((52 - 4) / 96 = 1/2, so 0.1 + 0.9 * (1 + cos(pi / 2)) / 2 = 0.55) and step 99, the last,
    trains at the floor (cos(pi) = -1)."""
    setting = trainer(4, 100, 0.1)
    assert lr_factor(0, 4, 100, 0.1) == 0.25
    assert lr_factor(2, 4, 100, 0.1) == 0.75
    assert lr_factor(3, 4, 100, 0.1) == 1.0
    assert lr_factor(51, 4, 100, 0.1) == pytest.approx(0.55, rel=1e-15)
    assert lr_factor(99, 4, 100, 0.1) == pytest.approx(0.1, rel=1e-15)
    assert lr_at(51, 2e-4, setting) == pytest.approx(1.1e-4, rel=1e-15)
    lrs = lrs_over(optimizer(), setting, 100)
    for g in range(len(lrs[0])):
        decay = [lrs[s][g] for s in range(3, 100)]
        assert all(a >= b for a, b in itertools.pairwise(decay))
    # no warmup and min_lr_ratio 1: a constant lr
    assert {lr_factor(s, 0, 30, 1.0) for s in range(30)} == {1.0}


def test_the_step_alone_sets_the_lr_so_a_restarted_optimizer_continues():
    """What resume relies on: an optimizer rebuilt mid-run (its state reloaded, nothing else) gets
    the same lrs from the step count as the one that never stopped."""
    setting = trainer(3, 20, 0.1)
    reference = lrs_over(optimizer(), setting, 20)
    for stop in (2, 7):  # in the warmup, in the cosine
        first = optimizer()
        lrs_over(first, setting, stop)
        again = optimizer()
        again.load_state_dict(first.state_dict())
        rest = []
        for step in range(stop, 20):
            set_lrs(again, step, setting)
            rest.append([g["lr"] for g in again.param_groups])
        assert rest == reference[stop:], stop


@pytest.mark.parametrize("warmup,total,floor", [(4, 100, 0.1), (3, 16, 0.0), (0, 20, 0.1), (10, 10, 0.1),
                                                (5, 30, 1.0), (100, 2000, 0.05)])
def test_bit_identical_to_the_lambdalr_of_earlier_runs(warmup, total, floor):
    """Runs trained before used transformers' get_cosine_with_min_lr_schedule_with_warmup started one
    step in (last_epoch=0); their checkpoints resume on lr_at, so every value must be equal, not close."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    opt = optimizer()
    old = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total,
                                                      min_lr_rate=floor, last_epoch=0)
    for step in range(total):
        assert [g["lr"] for g in opt.param_groups] == [lr_at(step, g["initial_lr"], trainer(warmup, total, floor))
                                                       for g in opt.param_groups], step
        opt.step()
        old.step()
