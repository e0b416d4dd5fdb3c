"""`graphvla train`: train a graph spec on a dataset (one process, or several under
`accelerate launch`)."""
from __future__ import annotations

import click

from .options import handles_errors, set_option


@click.command(name="train")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="DATA", help="a data YAML, a LeRobot dataset folder, or webdataset shards")
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
    from ..blocks.lora import describe as describe_parameters
    from ..policy.run_data import write_run_data
    from ..runners.train import Trainer
    from ..runners.train.dataio import load_bundle
    from ..spec.loader import load_spec

    s = load_spec(spec, overrides)
    bundle = load_bundle(data, s)
    trainer = Trainer.from_spec(s, bundle, run_dir, resume=resume, stop_after=stop_after, progress=not no_progress)
    if trainer.accelerator.is_main_process:  # users of per-GPU batch sizes see what one step trains on
        click.echo(trainer.layout.describe(), err=True)
        for line in describe_parameters(trainer.cg.model):  # trainable of total, and the LoRA adapters
            click.echo(line, err=True)
    if trainer.resumed_from is not None and trainer.accelerator.is_main_process:
        click.echo(f"resumed from {trainer.resumed_from} (step {trainer.step})", err=True)
    if trainer.accelerator.is_main_process:  # RUN/data.json, for `graphvla eval` to count training scenes
        write_run_data(run_dir, data)
    result = trainer.run()
    if trainer.accelerator.is_main_process:
        last = result.history[-1] if result.history else None
        loss = f", loss {last['loss']:.4f}" if last else ""
        rate = f", {result.samples_per_s:.1f} samples/s" if result.samples else ""
        click.echo(f"trained {s.name} to step {result.step}{loss}{rate}; checkpoint {result.checkpoint}")


commands = [train_cmd]

