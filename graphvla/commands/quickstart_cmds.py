"""`graphvla quickstart`: the whole loop on built-in defaults: record scripted-expert demonstrations
for the starVLA MT50 protocol's MT10 tasks, train a vision-only policy (camera image + instruction +
the robot's 4-d state) on CPU, serve it and evaluate it on the protocol's episodes of those tasks,
then print the success table beside starVLA's published rows for the same tasks.

Each stage is the public command a user would type (printed before it runs), so the quickstart
doubles as a worked example; a stage whose output already exists is skipped, so an interrupted
quickstart continues where it stopped (training resumes from its last checkpoint)."""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

from ..errors import SpecError
from ..runners.protocol_data import PROTOCOL, record_protocol_data
from ..spec.library import resolve_graph
from .options import UserError

DEFAULT_GRAPH = "metaworld/mt10"  # a packaged graph (`graphvla graphs` lists them)


def _log(message: str) -> None:
    """A stage's command line in cyan (as `_run` shows it), its messages plain; all on stderr."""
    click.secho(message, fg="cyan" if message.startswith("$ ") else None, err=True)


def _run(args: list) -> None:
    cmd = [sys.executable, "-m", "graphvla", *map(str, args)]
    click.secho("$ graphvla " + " ".join(shlex.quote(str(a)) for a in args), fg="cyan", err=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise UserError(f"stage failed (exit {result.returncode}): graphvla {' '.join(map(str, args))}")


@click.command()
@click.option("-o", "--out", default="runs/quickstart", show_default=True, type=click.Path(file_okay=False),
              help="folder for the data, the run and the evaluation")
@click.option("--graph", default=DEFAULT_GRAPH, show_default=True, metavar="GRAPH",
              help="the graph to train: a packaged name (`graphvla graphs`) or a YAML path")
@click.option("--tasks", default="MT10", show_default=True,
              help="comma-separated tasks of the starvla-mt50 protocol, MT10, MT50 or bucket names")
@click.option("--episodes", default=20, show_default=True, help="demonstrations recorded per task")
@click.option("--workers", default=2, show_default=True, help="processes for recording and evaluation")
@click.option("--steps", type=int, default=None, help="training steps (default: the graph's trainer.max_steps)")
@click.option("--eval-episodes", default=10, show_default=True, help="closed-loop episodes per task")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a key of the graph spec")
def quickstart(out, graph, tasks, episodes, workers, steps, eval_episodes, overrides):
    """Record demos, train, serve and evaluate a vision-only policy on Meta-World with one command."""
    from ..spec.loader import load_spec

    out = Path(out).resolve()
    try:
        spec = load_spec(resolve_graph(graph), overrides)  # fail before recording, not after
    except SpecError as e:
        issue = e.issues[0]
        raise UserError(f"graph '{graph}': {issue.message}" + (f" ({issue.hint})" if issue.hint else "")) from None
    started = time.time()
    try:
        data_yaml = record_protocol_data(out, spec, graph, tasks, episodes, workers, log=_log)
    except ValueError as e:
        raise UserError(str(e)) from None

    run_dir = out / "run"
    train_args = ["train", graph, "--data", data_yaml, "-o", run_dir]
    for o in overrides:
        train_args += ["--set", o]
    if steps:
        train_args += ["--set", f"trainer.max_steps={steps}"]
    if (run_dir / "checkpoints" / "latest").exists():
        train_args.append("--resume")
    t0 = time.time()
    _run(train_args)
    train_minutes = (time.time() - t0) / 60

    _run(["eval", run_dir, "--protocol", PROTOCOL, "--tasks", tasks, "--episodes", eval_episodes,
          "--workers", workers, "-o", out / "eval"])
    click.echo(f"\ntraining took {train_minutes:.1f} min; whole quickstart {(time.time() - started) / 60:.1f} min; "
               f"results in {out / 'eval'}")


commands = [quickstart]
