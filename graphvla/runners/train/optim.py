"""AdamW with one param group per block (its `train.lr` / `train.weight_decay`, frozen blocks
left out) and a cosine learning-rate schedule with linear warmup and a floor."""
from __future__ import annotations

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


def build_scheduler(optimizer, trainer: dict) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' cosine schedule with warmup and a floor: linear warmup over `warmup_steps`, then
    half a cosine down to `min_lr_ratio` times each group's own lr. A ratio (not an absolute floor)
    keeps every group's floor in proportion to its peak. Its state resumes with LambdaLR's.

    transformers counts warmup from 0, so its first step would train at lr 0. The schedule is
    started one step in instead: optimizer step s (0-based) trains at the schedule's value for s + 1,
    warmup gives (s + 1) / warmup_steps, and the last step (max_steps - 1) trains at the floor."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    for group in optimizer.param_groups:  # what LambdaLR needs to start past step 0
        group.setdefault("initial_lr", group["lr"])
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=trainer["warmup_steps"], num_training_steps=trainer["max_steps"],
        min_lr_rate=trainer["min_lr_ratio"], last_epoch=0)
