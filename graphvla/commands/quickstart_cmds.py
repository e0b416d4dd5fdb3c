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
from ..spec.library import resolve_graph
from .options import UserError

DEFAULT_GRAPH = "metaworld/mt10"  # a packaged graph (`graphvla graphs` lists them)
PROTOCOL = "starvla-mt50"

DATA_YAML = """# written by `graphvla quickstart`: the recorded demonstrations, bound to the graph's ports
datasets:
  - path: {data}
    keys: {{images: [observation.images.corner2], state: {state}, actions: action, instruction: task}}
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
    data_yaml = record_protocol_data(out, spec, graph, tasks, episodes, workers)

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


def record_protocol_data(out: Path, spec, graph: str, tasks: str, episodes: int, workers: int) -> Path:
    """Record the protocol's demonstrations of `tasks` into OUT/data at the graph's image size
    (skipped when already recorded) and bind them to the graph's ports in OUT/data.yaml."""
    from ..spec.schema import privileged_ports

    size = _image_size(spec, graph)
    state_key = "observation.environment_state" if privileged_ports(spec) else "observation.state"
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    if not (data_dir / "meta" / "info.json").exists():
        _run(["data", "metaworld", "--protocol", PROTOCOL, "-o", data_dir, "--tasks", tasks, "--episodes", episodes,
              "--size", size, "--workers", workers])
    data_yaml = out / "data.yaml"
    data_yaml.write_text(DATA_YAML.format(data=data_dir, state=state_key))
    return data_yaml


def _image_size(spec, graph) -> int:
    """The side of the graph's one square image port: what the recorder renders."""
    sizes = {tuple(p.get("size") or ()) for p in spec.inputs.values() if p.get("kind") == "image"}
    if len(sizes) != 1 or len(next(iter(sizes))) != 2 or len(set(next(iter(sizes)))) != 1:
        raise UserError(f"graph '{graph}': the quickstart records one square camera; the graph's image inputs "
                        f"have sizes {sorted(sizes)}")
    return int(next(iter(sizes))[0])


commands = [quickstart]
