"""Modes and precision of the blocks while training.

Modes. Hugging Face models come back from `from_pretrained` (and the tiny builder) in eval mode,
and `Policy(...)` puts a graph in eval mode, so the trainer sets the modes itself before every
step (`TrainModes.apply`, a walk over the modules, microseconds to a few ms): a block with a
trainable parameter is in train mode (dropout on, gradient checkpointing active), and inside it
every sub-module whose parameters are all frozen (a frozen vision tower, the frozen base layers
under LoRA adapters) is in eval mode, as is every frozen block.

Precision. A block loaded with `dtype: bfloat16` (or float16) would otherwise train pure bf16:
AdamW's update lr * m / sqrt(v) of about 1e-5 is far below half a bf16 ulp of a weight near 1
(2^-8), so it rounds away. `keep_fp32_masters` stores the *trainable* parameters of such a block
in float32 (the master weights the optimizer updates, saved as such in checkpoints) and runs the
block's forward/predict under autocast to its declared dtype, so its matmuls still run in bf16.
Frozen parameters stay in their low dtype. Under DeepSpeed (bf16 config) the engine casts the
module and keeps its own fp32 masters; this changes nothing there."""
from __future__ import annotations

import functools

import torch
from torch import nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def frozen_roots(module: nn.Module) -> list[nn.Module]:
    """The largest sub-modules of `module` that hold parameters, none of them trainable."""
    roots = []

    def visit(m):
        for child in m.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                roots.append(child)
            elif params:
                visit(child)

    visit(module)
    return roots


class TrainModes:
    """What `apply()` sets before each step: trainable blocks train, frozen blocks and frozen
    sub-modules eval. Computed once (requires_grad does not change during a run)."""

    def __init__(self, blocks: nn.ModuleDict):
        self.plan = []
        for bid, block in blocks.items():
            trainable = _has_trainable(block)
            self.plan.append((bid, block, trainable, frozen_roots(block) if trainable else []))

    def apply(self) -> None:
        for _, block, trainable, frozen in self.plan:
            block.train(trainable)
            for m in frozen:
                m.eval()

    def modes(self) -> dict:
        """block id -> 'train' / 'eval' as planned (for the start-of-run summary)."""
        return {bid: "train" if trainable else "eval" for bid, _, trainable, _ in self.plan}


def keep_fp32_masters(blocks: nn.ModuleDict) -> dict:
    """For every block whose trainable parameters are stored in bf16/fp16: cast those to float32
    in place and wrap the block's forward and predict in autocast to that dtype. Returns
    block id -> the low dtype it computes in. Call before the optimizer is built (it must hold
    the float32 tensors) and before a checkpoint is loaded into the blocks (to load the masters)."""
    changed = {}
    for bid, block in blocks.items():
        low = {p.dtype for p in block.parameters() if p.requires_grad and p.dtype in LOW_PRECISION}
        if not low:
            continue
        dtype = torch.bfloat16 if torch.bfloat16 in low else torch.float16
        for p in block.parameters():
            if p.requires_grad and p.dtype in LOW_PRECISION:
                p.data = p.data.float()
        for name in ("forward", "predict"):
            setattr(block, name, _autocast(getattr(block, name), block, dtype))
        changed[bid] = dtype
    return changed


def _autocast(method, block: nn.Module, dtype):
    @functools.wraps(method)
    def run(*args, **kwargs):
        device = next(block.parameters()).device.type
        with torch.autocast(device_type=device, dtype=dtype):
            return method(*args, **kwargs)

    return run
