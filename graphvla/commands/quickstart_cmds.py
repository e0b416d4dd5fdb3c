"""`graphvla quickstart`: the whole loop on built-in defaults — record Meta-World demonstrations,
train the MT10 graph on CPU, serve it and evaluate it in closed loop, then print the success table.

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
from ..spec.library import resolve_graph
from .options import UserError

DEFAULT_GRAPH = "metaworld/mt10-small"  # a packaged graph (`graphvla graphs` lists them)

DATA_YAML = """# written by `graphvla quickstart`: the recorded demonstrations, bound to the graph's ports
datasets:
  - path: {data}
    keys: {{images: [observation.images.corner], state: observation.environment_state, actions: action, instruction: task}}
"""


def _run(args: list, log: Path | None = None) -> None:
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
@click.option("--tasks", default="MT10", show_default=True, help="comma-separated Meta-World tasks, or MT10")
@click.option("--episodes", default=20, show_default=True, help="demonstrations recorded per task")
@click.option("--steps", type=int, default=None, help="training steps (default: the graph's trainer.max_steps)")
@click.option("--eval-episodes", default=10, show_default=True, help="closed-loop episodes per task")
@click.option("--size", default=64, show_default=True, help="camera image side in pixels (must match the graph)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a key of the graph spec")
def quickstart(out, graph, tasks, episodes, steps, eval_episodes, size, overrides):
    """Record demos, train, serve and evaluate a policy on Meta-World with one command."""
    out = Path(out).resolve()
    try:
        resolve_graph(graph)  # fail before recording, not after
    except SpecError as e:
        issue = e.issues[0]
        raise UserError(f"graph '{graph}': {issue.message}" + (f" ({issue.hint})" if issue.hint else "")) from None
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    started = time.time()

    if not (data_dir / "meta" / "info.json").exists():
        _run(["data", "metaworld", "-o", data_dir, "--tasks", tasks, "--episodes", episodes, "--size", size])
    data_yaml = out / "data.yaml"
    data_yaml.write_text(DATA_YAML.format(data=data_dir))

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

    _run(["eval", run_dir, "--suite", "metaworld", "--tasks", tasks, "--episodes", eval_episodes, "-o", out / "eval"])
    click.echo(f"\ntraining took {train_minutes:.1f} min; whole quickstart {(time.time() - started) / 60:.1f} min; "
               f"results in {out / 'eval'}")


commands = [quickstart]
