"""Text steps: the byte tokenizer of encoder.text and glue.state_text's prompts (the robot state
written into the instruction as integer bins, as pi0-FAST does). Plain Python and torch: no files."""
from __future__ import annotations

import torch

from .base import register_step
from .block import BlockStep


def byte_tokenize(texts, max_len: int) -> torch.Tensor:
    """UTF-8 bytes + 1 (0 is padding), truncated to max_len, padded to the longest: [B, L] int64."""
    rows = [list(t.encode("utf-8")[:max_len]) for t in texts]
    length = max([len(r) for r in rows] + [1])
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(r) + 1
    return ids


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Byte ids cut to the longest row: a row cut from a batch (the every-k caches run rows alone)
    is then exactly the row tokenized alone; whole batches are unchanged. Skipped on meta and while
    compiling or exporting, where a data-dependent length cannot be traced."""
    if torch.compiler.is_compiling() or ids.is_meta or ids.dim() != 2 or ids.shape[1] <= 1:
        return ids
    longest = max(int((ids != 0).sum(dim=1).max()), 1)
    return ids[:, :longest] if longest < ids.shape[1] else ids


@register_step
class ByteTokens(BlockStep):
    """encoder.text: `text` (B strings) -> `ids` [B, L] (bytes + 1, 0 = padding)."""

    kind = "byte_tokens"

    def __init__(self, block, sources, makes=("ids",), max_length: int = 96):
        super().__init__(block, sources, makes)
        self.max_length = int(max_length)

    def run(self, text):
        return {"ids": byte_tokenize(text, self.max_length)}

    def settings(self):
        return {"max_length": self.max_length}

    @classmethod
    def from_settings(cls, config, folder, block, sources, makes):
        return cls(block, sources, makes, config["max_length"])


STATE_PROMPT_DEFAULTS = {"pad_to": 0, "binning": "clip", "clean_text": False}


def state_bins(params: dict, state: torch.Tensor) -> torch.Tensor:
    """[B, D'] integer bins of a (normalized) state [B, D], zero-padded to `pad_to` dims first.
    binning 'clip': each value clipped to [low, high] and cut into `bins` equal bins (0 .. bins-1).
    binning 'digitize': numpy's digitize over the bins' left edges (float64) minus 1, as openpi's and
    LeRobot's pi0.5 write it: a value below `low` gives -1, one at or above the last edge bins-1."""
    p = {**STATE_PROMPT_DEFAULTS, **params}
    if p["pad_to"] and state.shape[-1] < p["pad_to"]:
        state = torch.nn.functional.pad(state, (0, p["pad_to"] - state.shape[-1]))
    if p["binning"] == "digitize":
        edges = torch.linspace(p["low"], p["high"], p["bins"] + 1, dtype=torch.float64)[:-1]
        return torch.bucketize(state.double().cpu(), edges, right=True) - 1
    unit = (state.float().clamp(p["low"], p["high"]) - p["low"]) / (p["high"] - p["low"])
    return (unit * p["bins"]).long().clamp(max=p["bins"] - 1)


def clean_text(text: str) -> str:
    """pi0.5's cleaning of a task: stripped, underscores and newlines as spaces."""
    return text.strip().replace("_", " ").replace("\n", " ")


def state_prompts(params: dict, text, state: torch.Tensor) -> list[str]:
    """The instruction of each sample with its (normalized) state written as integer bins (the last
    step of a history; `state_bins`), cleaned first when `clean_text`."""
    if len(text) != state.shape[0]:
        raise ValueError(f"{len(text)} instructions for a batch of {state.shape[0]} states")
    if state.dim() == 3:
        state = state[:, -1]
    rows = state_bins(params, state).tolist()
    if params.get("clean_text"):
        text = [clean_text(t) for t in text]
    return [params["template"].format(text=t, state=" ".join(map(str, r))) for t, r in zip(text, rows)]


@register_step
class StatePrompt(BlockStep):
    """glue.state_text: `text` + normalized `state` -> the prompts `text` (B strings)."""

    kind = "state_prompt"
    PARAMS = ("bins", "low", "high", "template", *STATE_PROMPT_DEFAULTS)

    def __init__(self, block, sources, makes=("text",), params: dict | None = None):
        super().__init__(block, sources, makes)
        params = {**STATE_PROMPT_DEFAULTS, **params}  # a run saved before pad_to / binning / clean_text
        self.params = {k: params[k] for k in self.PARAMS}

    def run(self, text, state):
        return {"text": state_prompts(self.params, list(text), state)}

    def settings(self):
        return {"params": dict(self.params)}

    @classmethod
    def from_settings(cls, config, folder, block, sources, makes):
        return cls(block, sources, makes, config["params"])
