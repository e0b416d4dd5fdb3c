"""A run's stages as functions: training a graph on data into a run folder (what `graphvla train`
does) and evaluating the run on a published protocol (what `graphvla eval --protocol` does).
`graphvla train` calls `train_stage`; a sweep's cells and the quickstart run each stage in a child
process of its own, so that runs share nothing (imported modules, thread settings, memory) and a
crash ends one stage only:

    python -c "<CHILD>" STAGE ARGS_JSON      (started by `stage_process`)

The child writes its notes to stderr and its results to stdout; its exit status says whether the
stage finished."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..errors import SpecError

CHILD = "import sys; from graphvla.runners.stages import main; sys.exit(main(sys.argv[1:]))"


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _say(message: str) -> None:
    print(message, flush=True)


def train_stage(graph, sets, data: str, run_dir, resume=False, stop_after: int | None = None, progress: bool = True,
                note=_note):
    """Train GRAPH (a path or a packaged name) with `--set` overrides SETS on DATA into RUN_DIR,
    resuming its latest checkpoint if RESUME; notes what one step trains on, the parameter counts and
    the resume point, and writes RUN_DIR/data.json (only the main process under `accelerate launch`).
    Returns (spec, TrainResult, is_main_process)."""
    from ..blocks.lora import describe as describe_parameters
    from ..policy.run_data import write_run_data
    from ..spec.loader import load_spec
    from .train import Trainer
    from .train.dataio import load_bundle

    s = load_spec(graph, list(sets))
    bundle = load_bundle(data, s)
    trainer = Trainer.from_spec(s, bundle, run_dir, resume=resume, stop_after=stop_after, progress=progress)
    main = trainer.accelerator.is_main_process
    if main:  # users of per-GPU batch sizes see what one step trains on
        note(trainer.layout.describe())
        for line in describe_parameters(trainer.cg.model):  # trainable of total, and the LoRA adapters
            note(line)
        if trainer.resumed_from is not None:
            note(f"resumed from {trainer.resumed_from} (step {trainer.step})")
        write_run_data(run_dir, data)  # for `graphvla eval` to count episodes from training scenes
    return s, trainer.run(), main


def trained_line(spec, result) -> str:
    """The line `graphvla train` ends with."""
    last = result.history[-1] if result.history else None
    loss = f", loss {last['loss']:.4f}" if last else ""
    rate = f", {result.samples_per_s:.1f} samples/s" if result.samples else ""
    return f"trained {spec.name} to step {result.step}{loss}{rate}; checkpoint {result.checkpoint}"


def eval_stage(run_dir, eval_dir, protocol: str, episodes: int, workers: int, tasks: str | None = None,
               buckets: str | None = None, gifs: bool = False, note=_note, say=_say) -> dict:
    """Evaluate RUN_DIR on PROTOCOL's episodes of TASKS/BUCKETS (comma-separated) into EVAL_DIR, as
    `graphvla eval RUN --protocol` does; says the table and the files written. Returns the summary."""
    from ..sim import protocol_module
    from .eval.evaluate import evaluate_run_protocol, protocol_label
    from .eval.protocol import PROTOCOLS, format_protocol_table

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol}: unknown (known: {', '.join(PROTOCOLS)})")
    split = lambda text: [t.strip() for t in str(text or "").split(",") if t.strip()]  # noqa: E731
    task_list = protocol_module(protocol).select(split(buckets), split(tasks))  # the protocol's own task names
    summary = evaluate_run_protocol(run_dir, task_list, int(episodes), int(workers), eval_dir, gifs=gifs, log=note,
                                    protocol=protocol)
    say(format_protocol_table(summary, label=protocol_label(summary)))
    say(f"wrote {Path(eval_dir) / 'results.json'}, results.md" + (f" and {len(task_list)} GIFs" if gifs else ""))
    return summary


def _train(**kwargs) -> None:
    spec, result, main = train_stage(**kwargs)
    if main:
        _say(trained_line(spec, result))


STAGES = {"train": _train, "eval": eval_stage}


def stage_process(stage: str, kwargs: dict, env=None, stdout=None, stderr=None) -> int:
    """Run STAGE with KWARGS (JSON-able) in a child process; its exit status."""
    return subprocess.run([sys.executable, "-c", CHILD, stage, json.dumps(kwargs)], env=env, stdout=stdout,
                          stderr=stderr).returncode


def main(argv: list[str]) -> int:
    stage, args = argv
    try:
        STAGES[stage](**json.loads(args))
    except SpecError as e:
        print(e.format(), file=sys.stderr, flush=True)
        return 1
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as e:  # as `graphvla` prints them
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr, flush=True)
        return 1
    return 0
