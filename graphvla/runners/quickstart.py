"""`graphvla quickstart`: record the protocol's demonstrations for a graph, train it and evaluate it
on the protocol's episodes, into one folder:

    OUT/data/, OUT/data.yaml   the recording and its binding to the graph's ports (protocol_data.py)
    OUT/run/                   the training run
    OUT/eval/                  results.json, results.md and a GIF per task

Each stage is logged as the public command that does the same (`$ graphvla ...`), so the
quickstart doubles as a worked example; training and evaluation run in child processes of their
own (runners/stages.py). A stage whose output already exists is skipped, so an interrupted
quickstart continues where it stopped (training resumes from its last checkpoint)."""
from __future__ import annotations

import shlex
import time
from pathlib import Path

from .protocol_data import PROTOCOL, record_protocol_data
from .stages import stage_process


def _shown(args: list) -> str:
    return "$ graphvla " + " ".join(shlex.quote(str(a)) for a in args)


def _stage(stage: str, kwargs: dict, args: list, log) -> None:
    log(_shown(args))
    rc = stage_process(stage, kwargs)
    if rc != 0:
        raise RuntimeError(f"stage failed (exit {rc}): graphvla {' '.join(map(str, args))}")


def run_quickstart(out, graph: str, spec, tasks: str, episodes: int, workers: int, steps: int | None,
                   eval_episodes: int, overrides=(), log=print) -> dict:
    """Record, train and evaluate GRAPH (SPEC: its loaded spec with OVERRIDES) into OUT; returns
    {"train_minutes", "minutes", "eval_dir"}."""
    out = Path(out)
    started = time.time()
    data_yaml = record_protocol_data(out, spec, graph, tasks, episodes, workers, log=log)

    run_dir = out / "run"
    sets = list(overrides) + ([f"trainer.max_steps={steps}"] if steps else [])
    resume = (run_dir / "checkpoints" / "latest").exists()
    args = ["train", graph, "--data", data_yaml, "-o", run_dir]
    for o in sets:
        args += ["--set", o]
    if resume:
        args.append("--resume")
    t0 = time.time()
    _stage("train", {"graph": graph, "sets": sets, "data": str(data_yaml), "run_dir": str(run_dir), "resume": resume},
           args, log)
    train_minutes = (time.time() - t0) / 60

    eval_dir = out / "eval"
    args = ["eval", run_dir, "--protocol", PROTOCOL, "--tasks", tasks, "--episodes", eval_episodes,
            "--workers", workers, "-o", eval_dir]
    _stage("eval", {"run_dir": str(run_dir), "eval_dir": str(eval_dir), "protocol": PROTOCOL, "episodes": eval_episodes,
                    "workers": workers, "tasks": tasks, "gifs": True}, args, log)
    return {"train_minutes": train_minutes, "minutes": (time.time() - started) / 60, "eval_dir": eval_dir}
