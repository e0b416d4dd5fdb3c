"""`graphvla check SPEC`: build the graph for real on CPU and run one training step per stream and
one predict on synthetic inputs (runners/check.py); print every loss and output shape.

`graphvla check RUN --parity [--data DATA] [--export DIR]`: the same frames through the training
collate, `Policy` and the export give the same block inputs and actions (runners/check.py
run_parity); prints the largest difference per port and exits 1 on a mismatch."""
from __future__ import annotations

import click

from .options import UserError, handles_errors, set_option


@click.command()
@click.argument("target", metavar="SPEC|RUN", type=click.Path())
@set_option
@click.option("--batch", default=2, show_default=True, help="synthetic batch size")
@click.option("--seed", default=0, show_default=True,
              help="seed of the synthetic batch; with --parity, frame i's session seed is SEED + i")
@click.option("--parity", is_flag=True, help="RUN (a run or checkpoint folder): compare the training collate, "
                                              "the Policy and the export (--export) on the same frames")
@click.option("--data", type=click.Path(), default=None,
              help="with --parity: the frames' data (default: the data RUN was trained on, RUN/data.json)")
@click.option("--export", "export_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="with --parity: an export folder of RUN (graphvla export) whose actions must match too")
@click.option("--frames", default=4, show_default=True, help="with --parity: how many frames to compare")
@click.option("--atol", default=1e-5, show_default=True, help="with --parity: the largest difference that matches")
@handles_errors
def check(target, overrides, batch, seed, parity, data, export_dir, frames, atol):
    """Build SPEC on CPU and run one training step and one predict on synthetic inputs; or, with
    --parity, check that training, the Policy and an export agree on RUN's data."""
    from ..runners.check import CheckFailed, run_check, run_parity

    if not parity:
        if data or export_dir:
            raise UserError("--data and --export go with --parity")
        try:
            report = run_check(target, overrides, batch=batch, seed=seed)
        except CheckFailed as e:
            raise UserError(f"{target}: check failed: {e}") from None
        click.echo(report.format())
        return
    if overrides:
        raise UserError("--set does not go with --parity: the run's own spec is checked")
    try:
        report = run_parity(target, data=data, export=export_dir, frames=frames, seed=seed, atol=atol)
    except CheckFailed as e:
        raise UserError(f"{target}: parity check failed: {e}") from None
    click.echo(report.format())
    if report.mismatches:
        raise SystemExit(1)  # the report said what differs


commands = [check]
