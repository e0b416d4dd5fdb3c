"""The FAST action tokenizer lives in graphvla/processors/fast_tokenizer.py (a processor step's
asset, loaded without the blocks); this name is kept for `graphvla fast-fit` and older imports."""
from ...processors.fast_tokenizer import BASE_CODEPOINT, BPE_FILE, CONFIG_FILE, FASTTokenizer, dct_matrix  # noqa: F401
