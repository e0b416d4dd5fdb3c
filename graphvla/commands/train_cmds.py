"""`graphvla train`: train a graph spec on a dataset (one process, or several under
`accelerate launch`)."""
from __future__ import annotations

import click

from .options import handles_errors, set_option


@click.command(name="train")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="DATA", help="a data YAML, a LeRobot dataset folder, webdataset shards, or a Hugging Face dataset "
                                                        "id org/name[@revision] (read through the Hub cache)")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False),
              help="run directory: checkpoints/ and logs/ (TensorBoard) go here")
@set_option
@click.option("--resume", is_flag=True, help="continue from RUN_DIR's latest checkpoint (weights, optimizer, "
                                             "data position, RNG)")
@click.option("--stop-after", type=click.IntRange(min=1), default=None, metavar="N",
              help="stop after N steps of this session and checkpoint (for time-limited jobs; --resume continues)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@handles_errors
def train_cmd(spec, data, run_dir, overrides, resume, stop_after, no_progress):
    """Train SPEC on DATA; trainer options come from the spec's `trainer:` section
    (e.g. --set trainer.max_steps=2000). Under `accelerate launch --config_file
    configs/accelerate/{ddp,deepspeed_zero2,deepspeed_zero3,fsdp}.yaml --num_processes N` each process
    trains on its shard of the data; trainer.batch_size is the global batch."""
    from ..runners.stages import train_stage, trained_line

    spec, result, main = train_stage(spec, overrides, data, run_dir, resume=resume, stop_after=stop_after,
                                     progress=not no_progress, note=lambda m: click.echo(m, err=True))
    if main:
        click.echo(trained_line(spec, result))


commands = [train_cmd]

