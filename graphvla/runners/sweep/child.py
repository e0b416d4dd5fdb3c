"""One stage of a sweep's run (training or the protocol evaluation), done by the runner functions
that `graphvla train` and `graphvla eval --protocol` use, in a child process of its own so that
runs share nothing (imported modules, thread settings, memory) and a crash ends one run only.

execute.py starts it as `python -c "<CHILD>" STAGE ARGS_JSON` (CHILD below) with stdout and stderr
going to the stage's log; the exit status says whether the stage finished."""
from __future__ import annotations

import json
import sys

CHILD = "import sys; from graphvla.runners.sweep.child import main; sys.exit(main(sys.argv[1:]))"


def _log(message: str) -> None:
    print(message, flush=True)


def train_stage(graph: str, sets: list, data: str, run_dir: str, resume: bool = False) -> None:
    """Train GRAPH with --set SETS on DATA into RUN_DIR (resuming its latest checkpoint)."""
    from ...policy.run_data import write_run_data
    from ...spec.loader import load_spec
    from ..train import train
    from ..train.dataio import load_bundle

    spec = load_spec(graph, sets)
    bundle = load_bundle(data, spec)
    write_run_data(run_dir, data)  # for the evaluation's count of episodes from training scenes
    result = train(spec, bundle, run_dir, resume=resume, progress=False)
    last = result.history[-1] if result.history else None
    loss = f", loss {last['loss']:.4f}" if last else ""
    _log(f"trained {spec.name} to step {result.step}{loss}; checkpoint {result.checkpoint}")


def eval_stage(run_dir: str, eval_dir: str, protocol: str, episodes: int, workers: int, tasks: str | None = None,
               buckets: str | None = None) -> None:
    """Evaluate RUN_DIR on PROTOCOL's episodes (no GIFs) into EVAL_DIR."""
    from ...sim import starvla_mt50 as P
    from ..eval.evaluate import evaluate_run_protocol, protocol_label
    from ..eval.protocol import PROTOCOLS, format_protocol_table

    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol {protocol}: unknown protocol (known: {', '.join(PROTOCOLS)})")
    split = lambda text: [t.strip() for t in (text or "").split(",") if t.strip()]  # noqa: E731
    task_list = P.select(split(buckets), split(tasks))
    summary = evaluate_run_protocol(run_dir, task_list, int(episodes), int(workers), eval_dir, gifs=False, log=_log)
    _log(format_protocol_table(summary, label=protocol_label(summary)))


STAGES = {"train": train_stage, "eval": eval_stage}


def main(argv: list[str]) -> int:
    stage, args = argv
    try:
        STAGES[stage](**json.loads(args))
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as e:  # the message is enough; the log keeps it
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0
