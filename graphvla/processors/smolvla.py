"""SmolVLA's language step (backbone.smolvla_vlm with `text` wired): the instruction with a newline
appended when it has none (LeRobot's smolvla_new_line_processor), tokenized with the VLM's tokenizer
right padded to the longest row and truncated to `max_length` (LeRobot 0.4's tokenizer_processor with
SmolVLA's settings; LeRobot 0.3.2's policy tokenized without truncation: `truncate` false)
-> `tokens` [B, L] int64 and `tokens_mask` [B, L] bool."""
from __future__ import annotations

import warnings

import torch

from .base import register_step
from .paligemma import TokenizerStep, newline_ended


@register_step
class SmolVLATokens(TokenizerStep):
    kind = "smolvla_tokens"
    holder = "SmolVLA's VLM's"

    def __init__(self, block, sources, makes=("tokens", "tokens_mask"), tokenizer=None, max_length: int = 48,
                 truncate: bool = True):
        super().__init__(block, sources, makes)
        self.tokenizer, self.max_length, self.truncate = tokenizer, int(max_length), bool(truncate)

    def run(self, text):
        tok = self._loaded()
        if isinstance(text, str):
            text = [text]
        with warnings.catch_warnings():  # without truncation the tokenizer warns of rows over max_length
            warnings.simplefilter("ignore")
            enc = tok(newline_ended(list(text)), max_length=self.max_length, truncation=self.truncate, padding="longest",
                      padding_side="right", return_tensors="pt")
        return {"tokens": enc["input_ids"].to(torch.long), "tokens_mask": enc["attention_mask"].to(torch.bool)}

    def settings(self):
        return {"max_length": self.max_length, "truncate": self.truncate}

    @classmethod
    def from_settings(cls, config, folder, block, sources, makes):
        from transformers import AutoTokenizer

        return cls(block, sources, makes, AutoTokenizer.from_pretrained(str(folder)), config["max_length"],
                   config.get("truncate", True))
