"""`aux.lm_loss`: the language-model loss for co-training on image-text data, from logits and
labels (next-token cross-entropy on the labelled tokens only, -100 elsewhere).

The simplest co-training YAML needs no aux block: a node that `share:`s the backbone takes the
VLM stream's inputs and its `lm_loss` port goes straight into `losses:` with `stream: vlm`. This
block is for when the loss itself is to be shaped: label smoothing, a z-loss on the logits, or
logits that come from a block other than a Hugging Face model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Block, InPort, OutPort, PortError
from ..registry import register

IGNORE = -100


def next_token_loss(logits, labels, label_smoothing: float = 0.0, z_loss: float = 0.0):
    """Mean cross-entropy of logits[:, t] predicting labels[:, t + 1] over labelled positions."""
    logits = logits[:, :-1].float()
    labels = labels[:, 1:].to(logits.device)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, label_smoothing=label_smoothing)
    if z_loss:
        valid = (labels != IGNORE).reshape(-1)
        lse = torch.logsumexp(flat[valid], dim=-1)
        loss = loss + z_loss * (lse**2).mean()
    return loss


@register
class LMLoss(Block):
    type_name = "aux.lm_loss"
    description = "Next-token LM loss on labelled tokens (co-training on image-text data), with label smoothing / z-loss."
    in_ports = {
        "logits": InPort("hidden", ndim=3, target=True, doc="[B, T, vocab], e.g. backbone.hf_vlm's logits"),
        "labels": InPort("tokens", ndim=2, target=True, doc="[B, T] token ids, -100 where there is no loss"),
    }
    out_ports = {"loss": OutPort("loss", train_only=True)}
    params_schema = {
        "type": "object",
        "properties": {
            "label_smoothing": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0},
            "z_loss": {"type": "number", "minimum": 0, "default": 0.0, "description": "weight of logsumexp(logits)^2"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        lg, lb = inputs["logits"].shape, inputs["labels"].shape
        if lg is not None and lb is not None and tuple(lg[:2]) != tuple(lb[:2]):
            raise PortError("labels", f"labels {list(lb)} do not line up with logits {list(lg)}")

    def forward(self, logits, labels):
        return {"loss": next_token_loss(logits, labels, self.params["label_smoothing"], self.params["z_loss"])}
