"""`graphvla quickstart`: the whole loop on built-in defaults: record scripted-expert demonstrations
for the starVLA MT50 protocol's MT10 tasks, train a vision-only policy (camera image + instruction +
the robot's 4-d state) on CPU, serve it and evaluate it on the protocol's episodes of those tasks,
then print the success table beside starVLA's published rows for the same tasks.

Each stage is shown as the public command a user would type before it runs (runners/quickstart.py
runs it), so the quickstart doubles as a worked example; a stage whose output already exists is
skipped, so an interrupted quickstart continues where it stopped (training resumes from its last
checkpoint)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import SpecError
from ..spec.library import resolve_graph
from .options import UserError

DEFAULT_GRAPH = "metaworld/mt10-pretrained"  # a packaged graph (`graphvla graphs` lists them)


def _log(message: str) -> None:
    """A stage's command line in cyan, other messages plain; all on stderr."""
    click.secho(message, fg="cyan" if message.startswith("$ ") else None, err=True)


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
    from ..runners.quickstart import run_quickstart
    from ..spec.loader import load_spec

    out = Path(out).resolve()
    try:
        spec = load_spec(resolve_graph(graph), overrides)  # fail before recording, not after
    except SpecError as e:
        issue = e.issues[0]
        raise UserError(f"graph '{graph}': {issue.message}" + (f" ({issue.hint})" if issue.hint else "")) from None
    try:
        done = run_quickstart(out, graph, spec, tasks, episodes, workers, steps, eval_episodes, overrides, log=_log)
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e)) from None
    click.echo(f"\ntraining took {done['train_minutes']:.1f} min; whole quickstart {done['minutes']:.1f} min; "
               f"results in {done['eval_dir']}")


commands = [quickstart]
