"""FAST decoded by the VLM itself: the two ends around a `backbone.hf_vlm` with `with.action_vocab`.
With GraphVLA's defaults (fullsize/*-fast-lm, tiny/fast-lm) a GraphVLA design after pi0-FAST, not
parity-tested; with a physical-intelligence/fast tokenizer folder and the VLM's action_token_base,
answer_end: chat_template and decode: free, starVLA's QwenFast (starvla/*-fast, fixture-tested).

    inputs.actions -> fast.encode -> vlm.target_tokens   (training: the LM loss on action tokens)
    vlm.generated  -> fast.decode -> actions, decode_ok  (inference: greedy, constrained decoding)

`fast.encode` turns each target chunk into FAST ids with the fitted tokenizer, its steps past the
episode's end (`mask` False) filled with the last valid action first (heads/common.py
hold_last_valid); `fast.decode` turns generated ids back into a chunk. A malformed sequence
decodes to the action input's hold action (heads/fast.py HoldFallback) with decode_ok False and a
logged warning, never an exception. Both only read the tokenizer when built for real: on
meta (compile) they are shaped from the graph, so full-size graphs compile without one.

`fast.encode`'s BPE is its processor step (processors/fast.py FASTTokens, on the normalized
chunk): the preprocess pipeline makes `NODE.tokens`, which the train graph passes through the
block to the VLM's `target_tokens`. It is a training target: the inference graph never runs it.
"""
from __future__ import annotations

import torch

from ..processors.block import bind
from ..processors.fast import PAD, FASTTokens, chunk_tokens  # noqa: F401 - chunk_tokens: its home moved
from .base import Block, InPort, OutPort, StepPorts
from .registry import register
from .heads.common import ACTION_PARAMS, action_shape
from .heads.fast import FIT_HINT, ON_MALFORMED, HoldFallback, decode_tokens, load_tokenizer

TOKENIZER_PARAM = {"type": ["string", "null"], "default": None,
                   "description": "folder of a fitted FAST tokenizer (relative to the spec's folder), or a "
                                  "Hugging Face Hub id org/name[@revision] holding one: GraphVLA's (graphvla "
                                  "fast-fit) or in physical-intelligence/fast's format (processors/fast_hub.py)"}


class _FASTEnd(Block):
    params_schema = {
        "type": "object",
        "properties": {"tokenizer": TOKENIZER_PARAM, **ACTION_PARAMS},
        "additionalProperties": False,
    }

    def _setup(self, ctx, shape_port):
        self.horizon, self.action_dim = action_shape(self, shape_port)
        self.tokenizer = None if ctx.meta else load_tokenizer(self, ctx)
        # keeps the block's device/dtype visible to .to() (it has no weights)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError(f"{self.block_id} ({self.type_name}) has no tokenizer: built on meta? {FIT_HINT}")


@register
class FASTEncode(_FASTEnd):
    type_name = "fast.encode"
    description = "Action chunk -> FAST token ids [B, L] (-1 padded): the answer a VLM with action_vocab learns."
    in_ports = {"actions": InPort("action", ndim=3, doc="normalized action chunk [B, H, A]"),
                "mask": InPort("mask", optional=True, ndim=2,
                               doc="[B, H] valid steps: the others are filled with the last valid action")}
    out_ports = {"tokens": OutPort("tokens", doc="[B, L] FAST ids, -1 after each chunk's last token")}

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self._setup(ctx, "actions")

    def step_ports(self, wired):
        info = self.port_info.get("actions")
        train_only = bool(info is not None and (info.decl or {}).get("train_only"))
        return StepPorts(("actions", "mask"), {"tokens": OutPort("tokens", train_only=train_only,
                                                                 doc="[B, L] FAST ids, -1 padded")})

    def processor_step(self, node=None, sources=None):
        return bind(FASTTokens, self, node, sources, ("actions", "mask"), ("tokens",), self.tokenizer)

    def forward(self, tokens):
        return {"tokens": tokens}  # made by the step; the graph passes them on (to a VLM's target_tokens)

    def meta_forward(self, actions, mask=None):
        # BPE never makes more tokens than there are coefficients
        return {"tokens": torch.empty(actions.shape[0], self.horizon * self.action_dim, dtype=torch.long, device="meta")}


@register
class FASTDecode(HoldFallback, _FASTEnd):
    type_name = "fast.decode"
    params_schema = {**_FASTEnd.params_schema,
                     "properties": {**_FASTEnd.params_schema["properties"], "on_malformed": ON_MALFORMED}}
    description = "Generated FAST token ids -> action chunk [B, H, A] and decode_ok; malformed rows hold still, never a crash."
    in_ports = {
        "tokens": InPort("tokens", ndim=2, doc="[B, L] FAST ids, -1 = padding (e.g. vlm.generated)"),
        "target": InPort("action", optional=True, target=True,
                         doc="the action chunk input: its shape, and its `hold` for malformed rows"),
    }
    out_ports = {
        "actions": OutPort("action", doc="[B, H, A]; the hold action where decode_ok is False"),
        "decode_ok": OutPort("mask", doc="[B] True where the tokens decoded to a valid chunk"),
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self._setup(ctx, "target")
        self._setup_hold("target")

    def forward(self, tokens, target=None):
        self._need_tokenizer()
        rows = [[i for i in row if i != PAD] for row in tokens.tolist()]
        actions, ok = decode_tokens(self, rows, tokens.device)
        return {"actions": actions.to(self._anchor.dtype), "decode_ok": ok}

    def meta_forward(self, tokens, target=None):
        b = tokens.shape[0]
        return {"actions": torch.empty(b, self.horizon, self.action_dim, device="meta"),
                "decode_ok": torch.empty(b, dtype=torch.bool, device="meta")}
