"""FAST steps: a fitted FAST tokenizer (fast_tokenizer.py) turning normalized action chunks into
token ids, for fast.encode (the answer a VLM with action tokens learns) and head.fast (its
teacher-forcing ids). Both are training targets: at inference the batch has no actions and the
steps make nothing. The tokenizer's files are the step's assets (`save_assets`)."""
from __future__ import annotations

import torch

from .base import register_step
from .block import BlockStep
from .fast_hub import load_fast_tokenizer
from .fast_tokenizer import FASTTokenizer

PAD = -1  # padding of token rows: FAST ids are >= 0


def hold_last_valid(actions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, H, A] chunks whose steps where `mask` [B, H] is False (past the episode's end) repeat the
    last valid step (steps before the first valid one take the first valid one), as `graphvla
    fast-fit` pads its chunks. The normalizer zeroes padded steps; a tokenizer that mixes all steps
    (FAST's DCT) would otherwise learn a jump to the middle of the action range. Rows without any
    valid step are returned as they are."""
    if mask is None:
        return actions
    m = mask.bool()
    if m.dim() != 2 or tuple(m.shape) != tuple(actions.shape[:2]):
        raise MaskShapeError("mask", f"expects [B, {actions.shape[1]}] to match the action chunk, got {list(m.shape)}")
    if bool(m.all()):
        return actions
    steps = torch.arange(m.shape[1], device=m.device).expand_as(m)
    first = m.int().argmax(dim=1, keepdim=True)  # first valid step (0 when there is none)
    last = torch.cummax(torch.where(m, steps, 0), dim=1).values
    index = torch.maximum(last, first)
    return torch.gather(actions, 1, index.unsqueeze(-1).expand_as(actions))


class MaskShapeError(ValueError):
    """A mask that does not fit its chunk; `port` names it (blocks report it as a PortError)."""

    def __init__(self, port: str, message: str):
        self.port = port
        super().__init__(message)


def chunk_tokens(tokenizer, actions, mask=None) -> torch.Tensor:
    """[B, H, A] normalized chunks (tails past `mask` held at the last valid action) -> [B, L] FAST
    ids on the CPU, PAD after each row's last token."""
    rows = tokenizer.encode(hold_last_valid(actions, mask).detach().float().cpu().numpy())
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def teacher_forcing_ids(tokenizer, target, eos: int, bos: int, max_tokens: int, block_id: str):
    """Target chunks [B, H, A] -> (decoder input ids: BOS then the tokens, labels: the tokens then
    EOS, -100 on padding), both [B, longest + 1] on the CPU."""
    seqs = tokenizer.encode(target.detach().float().cpu().numpy())
    longest = max(len(s) for s in seqs)
    if longest > max_tokens:
        raise ValueError(f"{block_id}: a target chunk needs {longest} FAST tokens but with.max_tokens is {max_tokens}")
    b, n = len(seqs), longest + 1
    inputs = torch.full((b, n), eos, dtype=torch.long)
    labels = torch.full((b, n), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        inputs[i, 0] = bos
        inputs[i, 1:len(s) + 1] = torch.tensor(s, dtype=torch.long)
        labels[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        labels[i, len(s)] = eos
    return inputs, labels


class _FASTStep(BlockStep):
    optional = ("mask",)

    def __init__(self, block, sources, makes, tokenizer: FASTTokenizer | None):
        super().__init__(block, sources, makes)
        # picklable: its BPE model travels as JSON. None: compiled on meta, where no tokenizer is
        # read; the step then only describes itself
        self.tokenizer = tokenizer

    def _fitted(self) -> FASTTokenizer:
        if self.tokenizer is None:
            raise RuntimeError(f"block '{self.block}': its FAST tokenizer was not loaded (the graph was compiled "
                               "on meta, for its shapes only); compile it on a device to run or save this step")
        return self.tokenizer

    def save_assets(self, folder):
        self._fitted().save(folder)

    def __eq__(self, other):
        mine, theirs = (None if t is None else t.config() for t in (self.tokenizer, other.tokenizer))
        return super().__eq__(other) and mine == theirs

    __hash__ = None


@register_step
class FASTTokens(_FASTStep):
    """fast.encode: normalized `actions` [B, H, A] (+ `mask`) -> `tokens` [B, L] (-1 padded)."""

    kind = "fast_tokens"

    def run(self, actions, mask=None):
        return {"tokens": chunk_tokens(self._fitted(), actions, mask)}

    @classmethod
    def from_settings(cls, config, folder, block, sources, makes):
        return cls(block, sources, makes, load_fast_tokenizer(folder))


@register_step
class FASTTeacherForcing(_FASTStep):
    """head.fast: normalized `target` chunks (+ `mask`) -> `decoder_inputs` (BOS + tokens) and
    `labels` (tokens + EOS, -100 on padding), [B, longest + 1] each."""

    kind = "fast_teacher_forcing"

    def __init__(self, block, sources, makes, tokenizer, eos: int, bos: int, max_tokens: int):
        super().__init__(block, sources, makes, tokenizer)
        self.eos, self.bos, self.max_tokens = int(eos), int(bos), int(max_tokens)

    def run(self, target, mask=None):
        inputs, labels = teacher_forcing_ids(self._fitted(), hold_last_valid(target, mask), self.eos, self.bos,
                                             self.max_tokens, self.block)
        return {"decoder_inputs": inputs, "labels": labels}

    def settings(self):
        return {"eos": self.eos, "bos": self.bos, "max_tokens": self.max_tokens}

    @classmethod
    def from_settings(cls, config, folder, block, sources, makes):
        return cls(block, sources, makes, load_fast_tokenizer(folder), config["eos"], config["bos"], config["max_tokens"])
