"""AdamW with one param group per block (its `train.lr` / `train.weight_decay`, frozen blocks
left out) and a cosine learning-rate schedule with linear warmup and a floor."""
from __future__ import annotations

import math

import torch
from torch import nn


def block_param_groups(model: nn.ModuleDict, block_train: dict, trainer: dict) -> list[dict]:
    """Param groups for AdamW. block_train: block id -> its spec `train:` section.

    Each block gets two groups, '<id>' (decayed: matrices, convolutions, embeddings) and
    '<id>.no_decay' (biases, norm scales: anything of rank < 2, which decay would only shrink).
    A frozen block (train.freeze, or no parameter requiring grad) gets none."""
    groups, seen = [], set()
    for bid, module in model.items():
        opts = block_train.get(bid) or {}
        if opts.get("freeze"):
            continue
        lr = float(opts.get("lr", trainer["lr"]))
        wd = float(opts.get("weight_decay", trainer["weight_decay"]))
        decay, no_decay = [], []
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 else no_decay).append(p)
        if decay:
            groups.append({"name": bid, "params": decay, "lr": lr, "weight_decay": wd})
        if no_decay:
            groups.append({"name": f"{bid}.no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def build_optimizer(groups: list[dict], trainer: dict) -> torch.optim.AdamW:
    if not groups:
        raise ValueError("nothing to train: every block is frozen (blocks.<id>.train.freeze)")
    return torch.optim.AdamW(groups, lr=trainer["lr"], betas=tuple(trainer["betas"]), weight_decay=trainer["weight_decay"])


def cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear warmup to 1 over `warmup` steps,
    then half a cosine down to `floor` at `total`, flat after.

    transformers' get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=floor) draws the same
    cosine, but its warmup is one step behind (step / warmup: the first step trains at lr 0), so it
    would change the first `warmup` lrs of every run and the runs' losses."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CosineSchedule:
    """A picklable lr lambda (LambdaLR saves callable objects' state, not closures)."""

    def __init__(self, warmup: int, total: int, floor: float):
        self.warmup, self.total, self.floor = warmup, total, floor

    def __call__(self, step: int) -> float:
        return cosine_factor(step, self.warmup, self.total, self.floor)


def build_scheduler(optimizer, trainer: dict) -> torch.optim.lr_scheduler.LambdaLR:
    fn = CosineSchedule(trainer["warmup_steps"], trainer["max_steps"], trainer["min_lr_ratio"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
