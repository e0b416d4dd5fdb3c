"""FAST decoded by the VLM itself (pi0-FAST, starVLA's Qwen-FAST): the two ends around a
`backbone.hf_vlm` with `with.action_vocab`.

    inputs.actions -> fast.encode -> vlm.target_tokens   (training: the LM loss on action tokens)
    vlm.generated  -> fast.decode -> actions, decode_ok  (inference: greedy, constrained decoding)

`fast.encode` turns each target chunk into FAST ids with the fitted tokenizer, its steps past the
episode's end (`mask` False) filled with the last valid action first (heads/common.py
hold_last_valid); `fast.decode` turns generated ids back into a chunk. A malformed sequence
decodes to the action input's hold action (heads/fast.py HoldFallback) with decode_ok False and a
logged warning, never an exception. Both only read the tokenizer when built for real: on
meta (compile) they are shaped from the graph, so full-size graphs compile without one.

In training, `fast.encode`'s BPE runs in the DataLoader workers (`FASTTokensEncoder`, on the
normalized chunk), and its tokens feed the VLM's encoder there too (blocks/prepared.py).
"""
from __future__ import annotations

import torch

from .base import Block, InPort, OutPort
from .prepared import BatchEncoder, Prepared
from .registry import register
from .heads.common import ACTION_PARAMS, action_shape, hold_last_valid
from .heads.fast import FIT_HINT, ON_MALFORMED, HoldFallback, decode_tokens, load_tokenizer

TOKENIZER_PARAM = {"type": ["string", "null"], "default": None,
                   "description": "folder of a fitted FAST tokenizer (relative to the spec's folder)"}
PAD = -1  # padding of token rows: FAST ids are >= 0


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


def chunk_tokens(tokenizer, actions, mask=None) -> torch.Tensor:
    """[B, H, A] normalized chunks (tails past `mask` held at the last valid action) -> [B, L] FAST
    ids on the CPU, PAD after each row's last token."""
    rows = tokenizer.encode(hold_last_valid(actions, mask).detach().float().cpu().numpy())
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class FASTTokensEncoder(BatchEncoder):
    """fast.encode in a DataLoader worker: the tokens of the batch's (normalized) chunks."""

    reads, tie, outputs = ("actions", "mask"), "actions", ("tokens",)

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # picklable: its BPE model travels as JSON

    def __call__(self, actions, mask=None) -> dict:
        return {"tokens": chunk_tokens(self.tokenizer, actions, mask)}


@register
class FASTEncode(Prepared, _FASTEnd):
    type_name = "fast.encode"
    description = "Action chunk -> FAST token ids [B, L] (-1 padded): the answer a VLM with action_vocab learns."
    in_ports = {"actions": InPort("action", ndim=3, doc="normalized action chunk [B, H, A]"),
                "mask": InPort("mask", optional=True, ndim=2,
                               doc="[B, H] valid steps: the others are filled with the last valid action")}
    out_ports = {"tokens": OutPort("tokens", doc="[B, L] FAST ids, -1 after each chunk's last token")}

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self._setup(ctx, "actions")

    def forward(self, actions, mask=None):
        prepared = self.take_prepared(actions)
        if prepared is not None:  # made by FASTTokensEncoder in a worker from this very chunk
            return {"tokens": prepared["tokens"].to(actions.device)}
        self._need_tokenizer()
        return {"tokens": chunk_tokens(self.tokenizer, actions, mask).to(actions.device)}

    def batch_encoder(self):
        return None if self.tokenizer is None else FASTTokensEncoder(self.tokenizer)

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
