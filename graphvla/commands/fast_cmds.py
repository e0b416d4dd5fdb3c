"""`graphvla fast-fit`: fit the FAST action tokenizer (head.fast) from a dataset's action chunks:
a .npy/.npz of normalized chunks [N, H, A], or a LeRobot folder (data/action_chunks.py reads them)."""
from __future__ import annotations

from pathlib import Path

import click

from .options import UserError, handles_errors


@click.command(name="fast-fit")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="folder to write the tokenizer to (point head.fast's with.tokenizer at it)")
@click.option("--horizon", type=int, default=None, help="chunk length (LeRobot folders; must match the head's horizon)")
@click.option("--key", default="action", show_default=True, help="action column (LeRobot folders)")
@click.option("--norm", default="q01_q99", show_default=True, type=click.Choice(["q01_q99", "min_max", "mean_std", "identity"]),
              help="normalization of a LeRobot folder's actions (use the one the trainer uses)")
@click.option("--vocab-size", default=1024, show_default=True, help="BPE vocabulary size")
@click.option("--scale", default=10.0, show_default=True, help="DCT coefficients are multiplied by this before rounding")
@handles_errors
def fast_fit(data, output, horizon, key, norm, vocab_size, scale):
    """Fit the FAST action tokenizer (DCT + BPE) on the action chunks in DATA and save it to OUTPUT.
    DATA is a .npy/.npz of normalized chunks [N, horizon, action_dim] or a LeRobot folder or
    Hugging Face dataset id org/name[@revision] (then --horizon is required)."""
    import numpy as np

    from ..processors.fast_tokenizer import FASTTokenizer
    from ..data.action_chunks import lerobot_chunks, load_chunks
    from ..hub import is_hub_value

    dataset = data.is_dir() or is_hub_value(str(data))  # a folder, or a Hugging Face dataset id
    if dataset and not horizon:
        raise UserError(f"{data} is a dataset folder: give the chunk length with --horizon (the head's horizon)")
    try:
        chunks = lerobot_chunks(data, key, horizon, norm) if dataset else load_chunks(data)
    except ValueError as e:  # the input is not action chunks
        raise UserError(str(e)) from None
    _, horizon, action_dim = chunks.shape
    tok = FASTTokenizer(horizon, action_dim, scale=scale, vocab_size=vocab_size).fit(chunks)
    tok.save(output)
    ids = tok.encode(chunks)
    decoded, ok = tok.decode(ids)
    mean_len = float(np.mean([len(i) for i in ids]))
    click.echo(f"fitted FAST tokenizer on {len(chunks)} chunks [{horizon}, {action_dim}] -> {output}")
    click.echo(f"  vocabulary {tok.vocab_size} (asked {vocab_size}), integers in [{tok.min_token}, {tok.max_token}], scale {scale}")
    click.echo(f"  tokens per chunk {mean_len:.1f} (vs {horizon * action_dim} values, {horizon * action_dim / mean_len:.1f}x)")
    click.echo(f"  round-trip max error {np.abs(decoded - chunks).max():.4f} (bound {tok.error_bound():.4f}), "
               f"decoded {int(ok.sum())}/{len(ok)}")


commands = [fast_fit]
