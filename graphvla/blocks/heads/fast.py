"""head.fast: autoregressive discrete action tokens. A fitted FAST tokenizer (processors/fast_tokenizer.py,
`graphvla fast-fit`) turns the target chunk into BPE tokens; a small transformer decoder that
cross-attends to the context (and state token) learns them with teacher forcing and
cross-entropy. This is the "small decoder for non-LM backbones" path.

At inference it decodes greedily until EOS (or `max_tokens`), then the tokenizer turns tokens
back into actions. A malformed sequence never crashes a rollout: that sample's chunk is the hold
action declared on the action input (`inputs.<actions>.hold`, dataset units, default zeros; see
`HoldFallback`), `decode_ok` is False for it, and a warning is logged. Never a normalized zero,
which un-normalizes to the middle of the action range.

The `mask` port marks the steps past the episode's end. DCT tokens mix all steps of the chunk,
so those steps cannot be left out of the loss; they are filled with the last valid action
(`hold_last_valid`, as `graphvla fast-fit` pads) instead of the normalizer's zeros, which would
teach a jump to the middle of the action range at every episode end.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...processors.block import bind
from ...processors.fast import FASTTeacherForcing, teacher_forcing_ids  # noqa: F401 - teacher_forcing_ids: its home moved
from ..base import Block, OutPort, ParamError, PortError, StepPorts
from ..registry import register
from .common import (ACTION_PARAMS, HEAD_IN_PORTS, WIDTH_PARAMS, ContextProjection, FeedForward, StateToken,
                     context_layers, layer_param, padding_mask, read_layer, state_width)
from ...processors.fast_hub import load_fast_tokenizer
from ...processors.fast_tokenizer import FASTTokenizer

log = logging.getLogger(__name__)
FIT_HINT = "fit one with `graphvla fast-fit DATA -o DIR` and point with.tokenizer at DIR"
ON_MALFORMED = {"enum": ["zeros", "repair"], "default": "zeros",
                "description": "a sequence that is not exactly H*A coefficients: the hold action (the action input's "
                               "`hold`, default zeros in dataset units; the name 'zeros' is kept for old specs), or "
                               "cut/pad its highest frequencies (decode_ok stays False either way)"}


class HoldFallback:
    """What a FAST block returns for a chunk it cannot decode: the action input's declared `hold`
    (dataset units; zeros when not declared: no motion for delta actions), held over the chunk.
    The block predicts normalized actions, so `Policy` sets `fallback` to `hold` normalized by
    its preprocess pipeline's step for `hold_port`; without normalization it is used as declared."""

    def _setup_hold(self, port: str):
        info = self.port_info.get(port)
        source = info.source if info is not None else ""
        self.hold_port = source.split(".", 1)[1] if source.startswith("inputs.") else None
        hold = (info.decl or {}).get("hold") if info is not None else None
        if hold is not None and len(hold) != self.action_dim:
            raise PortError(port, f"{source}.hold has {len(hold)} values but the action dim is {self.action_dim}")
        self.hold = np.zeros(self.action_dim) if hold is None else np.asarray(hold, dtype=np.float64)
        self.fallback = self.hold.astype(np.float32)


class DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer (causal self-attention, cross-attention to the
    context, MLP) that can run on new positions only, given the normalized inputs of the earlier
    ones (what the keys and values are computed from)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = FeedForward(width)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x, memory, memory_pad=None, causal=None, past=None):
        """x [B, n, W] new positions; past [B, p, W] or None; causal [n, p + n] additive mask.
        Returns (output [B, n, W], states [B, p + n, W] to pass as `past` next time)."""
        h = self.norm1(x)
        states = h if past is None else torch.cat([past, h], dim=1)
        x = x + self.self_attn(h, states, states, attn_mask=causal, need_weights=False)[0]
        x = x + self.cross_attn(self.norm2(x), memory, memory, key_padding_mask=memory_pad, need_weights=False)[0]
        return x + self.mlp(self.norm3(x)), states


@register
class FASTHead(HoldFallback, Block):
    type_name = "head.fast"
    description = "FAST tokens (DCT + BPE) decoded autoregressively by a small transformer decoder over the context; cross-entropy."
    in_ports = HEAD_IN_PORTS
    out_ports = {
        "actions": OutPort("action", doc="[B, H, A]; the hold action where decode_ok is False"),
        "decode_ok": OutPort("mask", doc="[B] True where the tokens decoded to a valid chunk"),
        "loss": OutPort("loss", train_only=True),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "tokenizer": {"type": ["string", "null"], "default": None,
                          "description": "folder of a fitted FAST tokenizer (relative to the spec's folder), or a "
                                         "Hugging Face Hub id org/name[@revision] holding one"},
            "vocab_size": {"type": "integer", "minimum": 2, "default": 1024,
                           "description": "BPE vocabulary the decoder is sized for; the tokenizer's must not exceed it"},
            "max_tokens": {"type": ["integer", "null"], "minimum": 1, "default": None,
                           "description": "longest token sequence (default horizon * action_dim, which BPE never exceeds)"},
            "on_malformed": ON_MALFORMED,
            **WIDTH_PARAMS,
            "layers": {"type": "integer", "minimum": 1, "default": 2, "description": "decoder layers"},
            "layer": layer_param("which layer of a [B, L, T, D] context to attend to (default the last)"),
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.layer, dim = read_layer(self)
        self.vocab = self.params["vocab_size"]
        self.max_tokens = self.params["max_tokens"] or self.horizon * self.action_dim
        self._setup_hold("target")
        self.eos, self.bos = self.vocab, self.vocab + 1
        # On meta (compile) the head is sized from with.vocab_size and never touches the disk.
        self.tokenizer = None if ctx.meta else self._load_tokenizer(ctx)
        w = self.params["width"]
        self.context_proj = ContextProjection(dim, w)
        self.state_token = StateToken(state_width(self), w) if "state" in inputs else None
        self.embed = nn.Embedding(self.vocab + 2, w)
        self.positions = nn.Parameter(torch.randn(self.max_tokens + 1, w) * 0.02)
        self.decoder = nn.ModuleList(DecoderLayer(w, self.params["heads"]) for _ in range(self.params["layers"]))
        self.norm = nn.LayerNorm(w)
        self.logits = nn.Linear(w, self.vocab + 1)  # BPE tokens and EOS

    def _load_tokenizer(self, ctx) -> FASTTokenizer:
        tok = load_tokenizer(self, ctx)
        if tok.vocab_size > self.vocab:
            raise ParamError("vocab_size", f"is {self.vocab} but the tokenizer in {self.params['tokenizer']} has "
                                           f"{tok.vocab_size} tokens")
        return tok

    # --- the decoder ----------------------------------------------------------------------------
    def memory(self, context, context_mask, state):
        tokens = self.context_proj(context_layers(context)[:, self.layer])
        pad = padding_mask(context_mask, tokens.shape[1])
        if self.state_token is not None and state is not None:
            tokens = torch.cat([tokens, self.state_token(state)], dim=1)
            if pad is not None:
                pad = torch.cat([pad, pad.new_zeros(pad.shape[0], 1)], dim=1)
        return tokens, pad

    def step_logits(self, ids, memory, memory_pad, cache=None):
        """ids [B, n] -> logits [B, n, vocab + 1] for the next token at every position. With a
        `cache` (a list per layer, filled in place) `ids` are only the newest tokens and the
        earlier ones are read from the cache: greedy decoding then costs O(n) per token."""
        start = cache[0].shape[1] if cache and cache[0] is not None else 0
        n = ids.shape[1]
        x = self.embed(ids) + self.positions[start:start + n]
        causal = None
        if n > 1:
            causal = torch.triu(torch.full((n, start + n), float("-inf"), device=ids.device), diagonal=start + 1)
        for i, layer in enumerate(self.decoder):
            x, states = layer(x, memory, memory_pad, causal, None if cache is None else cache[i])
            if cache is not None:
                cache[i] = states
        return self.logits(self.norm(x))

    # the targets' tokens are made by the processor step (processors/fast.py FASTTeacherForcing) in
    # the preprocess pipeline; the train graph passes them as decoder_inputs and labels
    def step_ports(self, wired):
        made = {"decoder_inputs": OutPort("tokens", train_only=True, doc="[B, n] BOS then the target's FAST ids"),
                "labels": OutPort("tokens", train_only=True, doc="[B, n] the FAST ids then EOS, -100 on padding")}
        return StepPorts(("target", "mask"), made if "target" in wired else {})

    def processor_step(self, node=None, sources=None):
        step = bind(FASTTeacherForcing, self, node, sources, ("target", "mask"), ("decoder_inputs", "labels"),
                    self.tokenizer, self.eos, self.bos, self.max_tokens)
        return step if "target" in step.sources else None

    def forward(self, context, context_mask=None, state=None, decoder_inputs=None, labels=None):
        if labels is None:
            return self.predict(context, context_mask, state)
        memory, pad = self.memory(context, context_mask, state)
        logits = self.step_logits(decoder_inputs.to(context.device), memory, pad)
        return {"loss": F.cross_entropy(logits.flatten(0, 1).float(), labels.to(context.device).flatten(), ignore_index=-100)}

    @torch.no_grad()
    def generate(self, context, context_mask=None, state=None) -> list[list[int]]:
        """Greedy decoding; each sample's tokens up to (not including) EOS."""
        memory, pad = self.memory(context, context_mask, state)
        b = memory.shape[0]
        ids = torch.full((b, 1), self.bos, dtype=torch.long, device=memory.device)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        cache = [None] * len(self.decoder)
        for _ in range(self.max_tokens + 1):
            nxt = self.step_logits(ids[:, -1:], memory, pad, cache)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.eos), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == self.eos
            if bool(done.all()):
                break
        out = []
        for row in ids[:, 1:].tolist():
            out.append(row[: row.index(self.eos)] if self.eos in row else row)
        return out

    def predict(self, context, context_mask=None, state=None):
        if self.tokenizer is None:
            raise RuntimeError(f"{self.block_id} (head.fast) has no tokenizer: built on meta? {FIT_HINT}")
        tokens = self.generate(context, context_mask, state)
        actions, ok = decode_tokens(self, tokens, context.device)
        return {"actions": actions.to(self.logits.weight.dtype), "decode_ok": ok}

    def meta_forward(self, context, context_mask=None, state=None, target=None, mask=None):
        b = context.shape[0]
        memory, pad = self.memory(context, context_mask, state)
        ids = torch.zeros(b, self.max_tokens + 1, dtype=torch.long, device=context.device)
        logits = self.step_logits(ids, memory, pad)
        out = {"actions": torch.empty(b, self.horizon, self.action_dim, device=context.device),
               "decode_ok": torch.empty(b, dtype=torch.bool, device=context.device)}
        if target is not None:
            out["loss"] = logits.float().sum() * 0
        return out


def load_tokenizer(block: Block, ctx) -> FASTTokenizer:
    """The fitted tokenizer of `with.tokenizer`, checked against the block's chunk shape."""
    path = block.params["tokenizer"]
    if not path:
        raise ParamError("tokenizer", f"is required to build {block.type_name}: {FIT_HINT}")
    folder = ctx.resolve_path(path, "tokenizer")
    try:
        tok = load_fast_tokenizer(folder)
    except (FileNotFoundError, ValueError) as e:
        raise ParamError("tokenizer", f"{e}; {FIT_HINT}") from None
    if getattr(tok, "with_shape", None) is not None:  # physical-intelligence/fast format: the graph gives the shape
        try:
            tok = tok.with_shape(block.horizon, block.action_dim)
        except ValueError as e:
            raise ParamError("tokenizer", f"{folder}: {e}") from None
    if (tok.horizon, tok.action_dim) != (block.horizon, block.action_dim):
        raise ParamError("tokenizer", f"{folder} was fitted on chunks [{tok.horizon}, {tok.action_dim}] but this graph's "
                                      f"chunks are [{block.horizon}, {block.action_dim}]; {FIT_HINT}")
    return tok


def decode_tokens(block: Block, token_lists, device=None):
    """Token lists -> (actions [B, H, A], decode_ok [B]). A malformed sample decodes to the block's
    hold action (HoldFallback; or, with with.on_malformed: repair, a cut/padded chunk) with
    decode_ok False and a logged warning, never an exception (a rollout must go on)."""
    repair = block.params.get("on_malformed") == "repair"
    actions, ok = block.tokenizer.decode(token_lists, repair=repair, fallback=getattr(block, "fallback", None))
    bad = [i for i, good in enumerate(ok) if not good]
    if bad:
        fate = "repaired where only their length was wrong (else the hold action)" if repair else "the hold action"
        log.warning("%s (%s): %d of %d samples decoded to malformed FAST tokens (samples %s); "
                    "their actions are %s and decode_ok is False", block.block_id, block.type_name, len(bad), len(ok),
                    bad[:8], fate)
    return torch.from_numpy(actions).to(device), torch.from_numpy(ok).to(device)
