"""FAST tokenizers saved in the Hugging Face format of `physical-intelligence/fast` (the one
starVLA's QwenFast, pi0-FAST and openpi load): a folder with `processor_config.json` (scale,
min_token, vocab_size, optionally time_horizon and action_dim) and the BPE as `tokenizer.json`
(a byte-level BPE of the `tokenizers` library; transformers 5 writes it under bpe_tokenizer/).
The folder's Python file (remote code) is never run: this module is GraphVLA's own reading of
the format, checked token for token against starVLA's use of it (tests/test_starvla_fast.py).

encode: a normalized chunk [H, A] -> DCT-II over time (orthonormal) -> times `scale`, rounded
half to even -> flattened frequency-major (all dims of frequency 0, then 1, ...) -> minus
`min_token`, negatives raised to 0 -> one character per integer (chr) -> the BPE's ids.
decode: ids -> the BPE's text (its byte-level decoder) -> ord + min_token -> [H, A] coefficients
-> / scale -> inverse DCT. A sequence that does not give exactly H x A coefficients is
malformed: ok False and the fallback (zeros by default, which is what the reference decoder
returns for it). Unlike GraphVLA's own FASTTokenizer (fast_tokenizer.py) nothing is clipped
above and the BPE's pre-tokenizer is the byte-level one, so token ids differ between the two.
The DCT runs in float64; the reference's scipy DCT keeps float32 chunks in float32, so a
coefficient within float32 rounding of a half-integer (times the scale) may round the other way.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .fast_tokenizer import FASTTokenizer, action_chunks, dct_matrix, read_bpe

PROCESSOR_CONFIG = "processor_config.json"
BPE_FILE = "tokenizer.json"
BPE_SUBFOLDER = "bpe_tokenizer"  # where transformers >= 5 saves a processor's tokenizer


def is_hub_fast(folder) -> bool:
    """True when `folder` holds a FAST tokenizer in the physical-intelligence/fast format."""
    d = Path(folder)
    return (d / PROCESSOR_CONFIG).is_file() and any((d / p).is_file() for p in (BPE_FILE, f"{BPE_SUBFOLDER}/{BPE_FILE}"))


def load_fast_tokenizer(folder):
    """The FAST tokenizer saved in `folder`: GraphVLA's own (fast_config.json) or one in
    physical-intelligence/fast's format. FileNotFoundError / ValueError name the file."""
    d = Path(folder)
    if not (d / "fast_config.json").is_file() and is_hub_fast(d):
        return HubFASTTokenizer.load(d)
    return FASTTokenizer.load(d)


class HubFASTTokenizer:
    """The same interface as fast_tokenizer.FASTTokenizer (encode, decode, vocab_size, save,
    load, config) for a physical-intelligence/fast folder. `horizon` and `action_dim` come from
    the folder's config when it has them, else from the graph (`with_shape`)."""

    fitted = True

    def __init__(self, bpe, scale: float, min_token: int, vocab_size: int, horizon=None, action_dim=None, extra=None):
        self.bpe = bpe
        self.scale, self.min_token, self.requested_vocab_size = float(scale), int(min_token), int(vocab_size)
        self.horizon = None if horizon is None else int(horizon)
        self.action_dim = None if action_dim is None else int(action_dim)
        self.extra = dict(extra or {})  # the config's other fields (auto_map, processor_class), saved back
        self._dct = None if self.horizon is None else dct_matrix(self.horizon)

    def with_shape(self, horizon: int, action_dim: int) -> "HubFASTTokenizer":
        """This tokenizer with the chunk shape set (the folder's own, when it has one, must agree)."""
        for name, mine, theirs in (("time_horizon", self.horizon, horizon), ("action_dim", self.action_dim, action_dim)):
            if mine is not None and mine != theirs:
                raise ValueError(f"the tokenizer's {PROCESSOR_CONFIG} sets {name} = {mine}, the graph needs {theirs}")
        return HubFASTTokenizer(self.bpe, self.scale, self.min_token, self.requested_vocab_size, horizon, action_dim,
                                self.extra)

    def _need_shape(self):
        if self.horizon is None or self.action_dim is None:
            raise RuntimeError("the FAST tokenizer has no chunk shape: its config has no time_horizon/action_dim "
                               "and no graph gave one (with_shape)")

    @property
    def vocab_size(self) -> int:
        """The number of action tokens a VLM reserves for it: the config's vocab_size (the BPE may
        have learnt fewer merges), never less than the BPE's own size."""
        return max(self.requested_vocab_size, self.bpe.get_vocab_size())

    def to_ints(self, actions) -> np.ndarray:
        """[N, H, A] -> [N, H*A] rounded, scaled DCT coefficients, frequency-major."""
        self._need_shape()
        a = action_chunks(actions, self.horizon, self.action_dim)
        coef = np.einsum("kt,nta->nka", self._dct, a)
        return np.rint(coef * self.scale).astype(np.int64).reshape(len(a), -1)

    def encode(self, actions) -> list[list[int]]:
        texts = ["".join(map(chr, np.maximum(row - self.min_token, 0).tolist())) for row in self.to_ints(actions)]
        return [enc.ids for enc in self.bpe.encode_batch(texts)]

    def decode(self, token_lists, repair: bool = False, fallback=None) -> tuple[np.ndarray, np.ndarray]:
        """N lists of ids -> (actions [N, H, A] float32, ok [N]); see FASTTokenizer.decode."""
        self._need_shape()
        n, size = len(token_lists), self.horizon * self.action_dim
        out = np.zeros((n, self.horizon, self.action_dim), dtype=np.float32)
        if fallback is not None:
            out[:] = np.broadcast_to(np.asarray(fallback, dtype=np.float32), (self.horizon, self.action_dim))
        ok = np.zeros(n, dtype=bool)
        for i, ids in enumerate(token_lists):
            text = self.bpe.decode([int(t) for t in ids], skip_special_tokens=False)
            values = np.asarray([ord(c) for c in text], dtype=np.int64) + self.min_token
            if len(values) == size:
                out[i], ok[i] = self.from_ints(values), True
            elif repair:
                fixed = np.zeros(size, dtype=np.int64)
                fixed[: min(size, len(values))] = values[:size]
                out[i] = self.from_ints(fixed)
        return out, ok

    def from_ints(self, ints) -> np.ndarray:
        q = np.asarray(ints, dtype=np.float64).reshape(self.horizon, self.action_dim) / self.scale
        return (self._dct.T @ q).astype(np.float32)

    def config(self) -> dict:
        return {**self.extra, "scale": self.scale, "min_token": self.min_token, "vocab_size": self.requested_vocab_size,
                "time_horizon": self.horizon, "action_dim": self.action_dim}

    def save(self, directory) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.bpe.save(str(d / BPE_FILE))
        (d / PROCESSOR_CONFIG).write_text(json.dumps(self.config(), indent=2, sort_keys=True) + "\n")
        return d

    @classmethod
    def load(cls, directory) -> "HubFASTTokenizer":
        """Raises FileNotFoundError / ValueError naming the file when the folder is not one."""
        d = Path(directory)
        cfg_path = d / PROCESSOR_CONFIG
        bpe_path = next((d / p for p in (BPE_FILE, f"{BPE_SUBFOLDER}/{BPE_FILE}") if (d / p).is_file()), d / BPE_FILE)
        for p in (cfg_path, bpe_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: {d} is not a FAST tokenizer in the physical-intelligence/fast format")
        try:
            cfg = json.loads(cfg_path.read_text())
            known = ("scale", "min_token", "vocab_size", "time_horizon", "action_dim")
            missing = [k for k in known[:3] if cfg.get(k) is None]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            tok = cls(None, float(cfg["scale"]), int(cfg["min_token"]), int(cfg["vocab_size"]), cfg.get("time_horizon"),
                      cfg.get("action_dim"), {k: v for k, v in cfg.items() if k not in known})
            if tok.scale <= 0:
                raise ValueError(f"scale must be > 0, got {tok.scale}")
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{cfg_path}: invalid FAST processor config ({e})") from None
        tok.bpe = read_bpe(bpe_path)
        return tok
