"""pi0's language step (backbone.paligemma with `text` wired): each instruction with a newline appended
when it has none (LeRobot's pi0_new_line_processor; not for pi0.5, `newline` false), tokenized with PaliGemma's tokenizer (or the one in
with.tokenizer), truncated and right-padded to `max_length` (LeRobot's tokenizer_processor with pi0's
settings: padding 'max_length', side 'right') -> `tokens` [B, L] int64 and `tokens_mask` [B, L] bool.
The tokenizer's files are the step's assets: a run carries them, nothing is fetched at serve time."""
from __future__ import annotations

import warnings

import torch

from .base import register_step
from .block import BlockStep


def newline_ended(texts) -> list[str]:
    return [t if t.endswith("\n") else t + "\n" for t in texts]


class TokenizerStep(BlockStep):
    """A language step around a Hugging Face tokenizer (self.tokenizer; None when compiled on meta without
    it): the tokenizer's files are its assets. `holder` names whose tokenizer with.tokenizer must hold."""
    holder = "the model's"

    def _loaded(self):
        if self.tokenizer is None:
            raise RuntimeError(f"block '{self.block}': its tokenizer was not loaded (the graph was compiled on meta "
                               "without its tokenizer on disk, for its shapes only); set with.tokenizer to a folder "
                               f"or Hub id holding {self.holder} tokenizer")
        return self.tokenizer

    def save_assets(self, folder):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._loaded().save_pretrained(str(folder))


@register_step
class PaliGemmaTokens(TokenizerStep):
    kind = "paligemma_tokens"
    holder = "PaliGemma's"

    def __init__(self, block, sources, makes=("tokens", "tokens_mask"), tokenizer=None, max_length: int = 48,
                 newline: bool = True):
        super().__init__(block, sources, makes)
        self.tokenizer, self.max_length, self.newline = tokenizer, int(max_length), bool(newline)

    def run(self, text):
        tok = self._loaded()
        text = [text] if isinstance(text, str) else list(text)
        enc = tok(newline_ended(text) if self.newline else text, max_length=self.max_length, truncation=True, padding="max_length",
                  padding_side="right", return_tensors="pt")
        return {"tokens": enc["input_ids"].to(torch.long), "tokens_mask": enc["attention_mask"].to(torch.bool)}

    def settings(self):
        return {"max_length": self.max_length, "newline": self.newline}

    @classmethod
    def from_settings(cls, config, folder, block, sources, makes):
        from transformers import AutoTokenizer

        return cls(block, sources, makes, AutoTokenizer.from_pretrained(str(folder)), config["max_length"],
                   config.get("newline", True))
