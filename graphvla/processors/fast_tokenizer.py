"""The FAST action tokenizer (Pertsch et al. 2025): a chunk of normalized actions [H, A] ->
per-dimension DCT over time (type II, orthonormal) -> scale and round to integers -> flatten in
frequency-major order (all dims of frequency 0, then frequency 1, ...) -> byte-pair encoding of
that integer sequence with the `tokenizers` library (each integer is one unicode character).

Actions are expected normalized (e.g. to [-1, 1]); the tokenizer does not normalize. Integers
outside the range seen in `fit` (widened by 10% on each side) are clipped to it. Within that range the round-trip error of every
action value is at most `error_bound()` = 0.5 / scale * max_n sum_k |C[k, n]| (C the DCT matrix;
at most 0.5 * sqrt(H) / scale).

`decode` never raises on bad tokens: a sample whose ids are not in the vocabulary, or whose
characters do not make exactly H*A coefficients, decodes to `fallback` (the blocks pass the
action input's declared hold action, normalized; zeros without one) with its flag set to False.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CONFIG_FILE = "fast_config.json"
BPE_FILE = "tokenizer.json"
FORMAT_VERSION = 1
BASE_CODEPOINT = 0x4E00  # a block of ordinary letters: no whitespace, no combining marks
RANGE_MARGIN = 0.1  # the integer range is the fitted data's, widened by this fraction on each side


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II: coefficients = C @ x; x = C.T @ coefficients."""
    k = np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (t + 0.5) * k / n)
    c[0] /= np.sqrt(2.0)
    return c


def action_chunks(actions, horizon: int, action_dim: int) -> np.ndarray:
    """[N, H, A] (or one [H, A]) float64 action chunks; ValueError on another shape or a NaN/inf."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (horizon, action_dim):
        raise ValueError(f"expected action chunks [N, {horizon}, {action_dim}], got shape {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError("action chunks contain NaN or inf")
    return a


def read_bpe(path):
    """The BPE model (a tokenizers.Tokenizer) saved at `path`; ValueError naming the file when it cannot be read."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot read the BPE model ({e})") from None


class FASTTokenizer:
    def __init__(self, horizon: int, action_dim: int, scale: float = 10.0, vocab_size: int = 1024):
        if horizon < 1 or action_dim < 1:
            raise ValueError(f"horizon and action_dim must be >= 1, got {horizon} and {action_dim}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.horizon, self.action_dim = int(horizon), int(action_dim)
        self.scale = float(scale)
        self.requested_vocab_size = int(vocab_size)
        self.min_token = self.max_token = None
        self.bpe = None
        self._dct = dct_matrix(self.horizon)

    # --- the integer stage ---------------------------------------------------------------
    def to_ints(self, actions) -> np.ndarray:
        """[N, H, A] -> [N, H*A] integers, frequency-major."""
        coef = np.einsum("kt,nta->nka", self._dct, action_chunks(actions, self.horizon, self.action_dim))
        return np.rint(coef * self.scale).astype(np.int64).reshape(len(coef), -1)

    def from_ints(self, ints) -> np.ndarray:
        q = np.asarray(ints, dtype=np.float64).reshape(-1, self.horizon, self.action_dim) / self.scale
        return np.einsum("kt,nka->nta", self._dct, q).astype(np.float32)

    def error_bound(self) -> float:
        """Largest |decode(encode(x)) - x| for chunks inside the fitted range."""
        return float(0.5 / self.scale * np.abs(self._dct).sum(axis=0).max())

    # --- the BPE stage ----------------------------------------------------------------------
    def _text(self, ints) -> str:
        clipped = np.clip(ints, self.min_token, self.max_token) - self.min_token
        return "".join(chr(BASE_CODEPOINT + int(v)) for v in clipped)

    def fit(self, actions) -> "FASTTokenizer":
        from tokenizers import Tokenizer, models, trainers

        ints = self.to_ints(actions)
        lo, hi = int(ints.min()), int(ints.max())
        margin = int(np.ceil(RANGE_MARGIN * (hi - lo)))  # chunks a bit beyond the fitted data still round-trip
        self.min_token, self.max_token = lo - margin, hi + margin
        alphabet = [chr(BASE_CODEPOINT + i) for i in range(self.max_token - self.min_token + 1)]
        if self.requested_vocab_size < len(alphabet):
            raise ValueError(f"vocab_size {self.requested_vocab_size} is smaller than the {len(alphabet)} distinct "
                             f"integers of the data (scale {self.scale}); raise vocab_size or lower scale")
        bpe = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=self.requested_vocab_size, initial_alphabet=alphabet,
                                      special_tokens=[], show_progress=False, limit_alphabet=len(alphabet))
        bpe.train_from_iterator((self._text(row) for row in ints), trainer=trainer, length=len(ints))
        self.bpe = bpe
        return self

    @property
    def fitted(self) -> bool:
        return self.bpe is not None

    @property
    def vocab_size(self) -> int:
        self._need_fit()
        return self.bpe.get_vocab_size()

    def _need_fit(self):
        if not self.fitted:
            raise RuntimeError("the FAST tokenizer is not fitted: call fit() or load() (or run `graphvla fast-fit`)")

    def encode(self, actions) -> list[list[int]]:
        """[N, H, A] (or one [H, A] chunk) -> N lists of token ids."""
        self._need_fit()
        return [enc.ids for enc in self.bpe.encode_batch([self._text(row) for row in self.to_ints(actions)])]

    def decode(self, token_lists, repair: bool = False, fallback=None) -> tuple[np.ndarray, np.ndarray]:
        """N lists of token ids -> (actions [N, H, A] float32, ok [N] bool). Bad samples give
        `fallback` (an [A] action held over the chunk, or an [H, A] chunk; default zeros); with
        `repair`, a sample whose only fault is its number of coefficients is cut or padded with
        zero coefficients instead (the order is frequency-major, so what is missing or extra are
        the highest frequencies). Repaired samples still have ok False."""
        self._need_fit()
        n = len(token_lists)
        out = np.zeros((n, self.horizon, self.action_dim), dtype=np.float32)
        if fallback is not None:
            out[:] = np.broadcast_to(np.asarray(fallback, dtype=np.float32), (self.horizon, self.action_dim))
        ok = np.zeros(n, dtype=bool)
        size = self.horizon * self.action_dim
        for i, ids in enumerate(token_lists):
            ints = self._ints_of(ids)
            if ints is not None and len(ints) == size:
                out[i] = self.from_ints(ints)[0]
                ok[i] = True
            elif ints is not None and repair:
                fixed = np.zeros(size, dtype=np.int64)
                fixed[: min(size, len(ints))] = ints[:size]
                out[i] = self.from_ints(fixed)[0]
        return out, ok

    def _ints_of(self, ids):
        """The integer coefficients of one id list (any count), or None for ids outside the
        vocabulary or characters outside the fitted range."""
        vocab = self.bpe.get_vocab_size()
        pieces = []
        for i in ids:
            i = int(i)
            token = self.bpe.id_to_token(i) if 0 <= i < vocab else None
            if token is None:
                return None
            pieces.append(token)
        values = [ord(c) - BASE_CODEPOINT for c in "".join(pieces)]
        if any(not 0 <= v <= self.max_token - self.min_token for v in values):
            return None
        return np.asarray(values, dtype=np.int64) + self.min_token

    # --- files ------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"format": "graphvla-fast", "version": FORMAT_VERSION, "horizon": self.horizon, "action_dim": self.action_dim,
                "scale": self.scale, "vocab_size": self.vocab_size, "min_token": self.min_token, "max_token": self.max_token}

    def save(self, directory) -> Path:
        self._need_fit()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.bpe.save(str(d / BPE_FILE))
        (d / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory) -> "FASTTokenizer":
        """Raises FileNotFoundError / ValueError naming the file when the folder is not a fitted tokenizer."""
        d = Path(directory)
        cfg_path, bpe_path = d / CONFIG_FILE, d / BPE_FILE
        for p in (cfg_path, bpe_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: {d} is not a fitted FAST tokenizer")
        try:
            cfg = json.loads(cfg_path.read_text())
            if cfg.get("format") != "graphvla-fast":
                raise ValueError("not a graphvla-fast config")
            if cfg.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {cfg.get('version')} is not supported (expected {FORMAT_VERSION})")
            tok = cls(cfg["horizon"], cfg["action_dim"], cfg["scale"], cfg["vocab_size"])
            tok.min_token, tok.max_token = int(cfg["min_token"]), int(cfg["max_token"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{cfg_path}: invalid FAST tokenizer config ({e})") from None
        tok.bpe = read_bpe(bpe_path)
        return tok
