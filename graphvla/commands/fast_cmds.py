"""`graphvla fast-fit`: fit the FAST action tokenizer (head.fast) from a dataset's action chunks:
a .npy/.npz of normalized chunks [N, H, A], or a LeRobot folder (every window of H frames of the
action column inside an episode, padded past its end by repeating the last action, normalized
with the dataset's own statistics as the trainer would)."""
from __future__ import annotations

from pathlib import Path

import click

from .options import UserError, handles_errors


def load_chunks(path: Path):
    """Action chunks [N, H, A] from a .npy array or a .npz archive (key 'actions', or its only array)."""
    import numpy as np

    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix == ".npy":
        arr = np.load(path)
    elif path.suffix == ".npz":
        with np.load(path) as z:
            keys = list(z.keys())
            if "actions" in keys:
                arr = z["actions"]
            elif len(keys) == 1:
                arr = z[keys[0]]
            else:
                raise UserError(f"{path}: holds arrays {keys}; name the action chunks 'actions'")
    else:
        raise UserError(f"{path}: expected a .npy or .npz file of action chunks [N, horizon, action_dim]")
    if arr.ndim != 3:
        raise UserError(f"{path}: expected action chunks [N, horizon, action_dim], got shape {list(arr.shape)}")
    return arr


def lerobot_chunks(root: Path, key: str, horizon: int, norm: str):
    """Normalized action chunks [N, horizon, A] from a LeRobot (or packed shard) folder."""
    import numpy as np

    from ..data.api import open_source
    from ..data.normalize import Normalizer
    from ..data.stats import compute_stats

    source = open_source(root)
    if key not in source.columns:
        raise UserError(f"{root}: no column '{key}'; numeric columns: {', '.join(sorted(source.columns))}")
    actions = np.asarray(source.columns[key], dtype=np.float32)
    actions = Normalizer({key: compute_stats(actions)}, {key: norm}).normalize_array(key, actions)
    chunks = []
    for start, end in source.episodes.values():
        rows = np.arange(start, end)
        windows = np.minimum(rows[:, None] + np.arange(horizon)[None, :], end - 1)
        chunks.append(actions[windows])
    return np.concatenate(chunks)


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
    DATA is a .npy/.npz of normalized chunks [N, horizon, action_dim] or a LeRobot folder
    (then --horizon is required)."""
    import numpy as np

    from ..blocks.heads.fast_tokenizer import FASTTokenizer

    if data.is_dir():
        if not horizon:
            raise UserError(f"{data} is a dataset folder: give the chunk length with --horizon (the head's horizon)")
        chunks = lerobot_chunks(data, key, horizon, norm)
    else:
        chunks = load_chunks(data)
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
