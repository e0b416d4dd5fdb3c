"""`graphvla check SPEC`: build the graph for real on CPU and run one training step per stream and
one predict on synthetic inputs (runners/check.py); print every loss and output shape."""
from __future__ import annotations

import click

from .options import UserError, handles_errors, set_option


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@set_option
@click.option("--batch", default=2, show_default=True, help="synthetic batch size")
@click.option("--seed", default=0, show_default=True)
@handles_errors
def check(spec, overrides, batch, seed):
    """Build SPEC on CPU and run one training step and one predict on synthetic inputs."""
    from ..runners.check import CheckFailed, run_check

    try:
        report = run_check(spec, overrides, batch=batch, seed=seed)
    except CheckFailed as e:
        raise UserError(f"{spec}: check failed: {e}") from None
    click.echo(report.format())


commands = [check]
