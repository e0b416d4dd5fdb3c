"""Running a sweep's cells: each run is trained and then evaluated on the sweep's protocol by the
runner functions behind `graphvla train` and `graphvla eval --protocol`, each stage in a child
process (runners/stages.py), so runs share nothing; cell.json keeps the equivalent commands to rerun a run
by hand. A run's state is in OUT/cells/CELL/seedN/:

    cell.json     what the run is: axes, seed, graph, overrides, fingerprint, diff, parameters
    run/          the training run (checkpoints/, logs/) - an interrupted run resumes from it
    eval/         results.json of the protocol evaluation
    state.json    training sessions (seconds, steps), the loss curve, eval seconds, finished
    train.log, eval.log

A finished run is never redone; one whose training stopped resumes from its last checkpoint;
one whose evaluation stopped evaluates again (evaluation is deterministic)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ...errors import SpecError, SpecIssue
from ...spec.loader import load_spec
from ...fileio import write_text_atomic
from ...policy.checkpoint import latest_checkpoint
from .config import Run, Sweep
from .control import describe_refusal, uncontrolled
from .data_axes import RECORDINGS, data_refusals, label, plan_recordings, recording


class SweepRefused(ValueError):
    """A cell changes more than its axes declare; nothing was trained."""


def run_dir(out, run: Run) -> Path:
    return Path(out) / "cells" / run.cell / f"seed{run.seed}"


def load_run_spec(sweep: Sweep, graph: str, overrides) -> object:
    """The spec of a run; an error in an override points at the sweep file's line, not at `--set`."""
    where = {f"--set {o.text}": o.path for o in overrides}
    try:
        return load_spec(graph, [o.text for o in overrides])
    except SpecError as e:
        issues = []
        for i in e.issues:
            loc = i.location
            if loc is not None and str(loc.file) in where:
                loc = sweep.locate(where[str(loc.file)]) or loc
            issues.append(SpecIssue(i.message, i.path, loc, i.block, i.hint, i.severity))
        raise SpecError(issues) from None


def check_controls(sweep: Sweep, runs: list[Run]) -> dict:
    """Load every run's spec and refuse the sweep if any cell changes more than its axes declare.
    Returns run.key -> (base spec, cell spec)."""
    specs, refusals = {}, []
    for run in runs:
        base = load_run_spec(sweep, sweep.base, sweep.base_overrides(run.seed))
        cell = load_run_spec(sweep, run.graph, run.overrides)
        rows = uncontrolled(base, cell, run.allowed)
        if rows:
            refusals.append(describe_refusal(run, base, cell, rows))
        refusals += data_refusals(sweep, run, base, cell)  # the recording is controlled too
        specs[run.key] = (base, cell)
    if refusals:
        raise SweepRefused(f"{sweep.file}: the sweep is not controlled; nothing was trained.\n" + "\n\n".join(refusals))
    return specs


def data_of(sweep: Sweep, run: Run, data: str) -> str:
    """The data a run trains on: its cell's recording under data axes, else DATA."""
    label = sweep.cell_recording.get(run.cell)
    return sweep.recordings[label]["data"] if label else data


def train_command(run: Run, data: str, out_dir: Path) -> list[str]:
    args = ["train", run.graph, "--data", str(data), "-o", str(out_dir), "--no-progress"]
    for s in run.sets:
        args += ["--set", s]
    return args


def eval_command(sweep: Sweep, train_dir: Path, eval_dir: Path) -> list[str]:
    e = sweep.eval
    args = ["eval", str(train_dir), "--protocol", e["protocol"], "--episodes", str(e["episodes"]),
            "--workers", str(e["workers"]), "-o", str(eval_dir), "--no-gif"]
    if e.get("tasks"):
        args += ["--tasks", e["tasks"]]
    if e.get("buckets"):
        args += ["--buckets", e["buckets"]]
    return args


def shell_line(args: list[str]) -> str:
    return "graphvla " + " ".join(shlex.quote(a) for a in args)


def read_state(d: Path) -> dict:
    path = d / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {"train_sessions": [], "finished": False}


def write_state(d: Path, state: dict) -> None:
    write_text_atomic(d / "state.json", json.dumps(state, indent=2, sort_keys=True) + "\n")


def describe_run(sweep: Sweep, run: Run, base_spec, cell_spec, data: str, d: Path) -> dict:
    from ...compiler.compile import compile_graph
    from ...compiler.diff import diff_specs, format_diff

    counts = compile_graph(cell_spec).param_counts()  # on the meta device: no weights allocated
    return {"cell": run.cell, "axes": run.axes, "seed": run.seed, "graph": run.graph, "overrides": run.sets,
            "fingerprint": cell_spec.fingerprint, "name": cell_spec.name,
            "diff": format_diff(base_spec, cell_spec, diff_specs(base_spec, cell_spec)),
            "params_total": sum(t for t, _ in counts.values()), "params_trainable": sum(t for _, t in counts.values()),
            "batch_size": int(cell_spec.section("trainer")["batch_size"]),
            "max_steps": int(cell_spec.section("trainer")["max_steps"]),
            "train_command": shell_line(train_command(run, data, d / "run")),
            "eval_command": shell_line(eval_command(sweep, d / "run", d / "eval"))}


def _checkpoint_step(train_dir: Path) -> int:
    ckpt = latest_checkpoint(train_dir)
    if ckpt is None:
        return 0
    return int(json.loads((ckpt / "trainer_state.json").read_text())["step"])


def threads_per_run(workers: int) -> int:
    """CPU threads each run may use: the cores shared out between the runs side by side (more
    threads than cores slows every run down), or fewer where the user set OMP_NUM_THREADS (other
    jobs share the machine)."""
    share = max(1, (os.cpu_count() or 1) // max(1, workers))
    asked = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(asked)) if asked.isdigit() and int(asked) > 0 else share


def _run_stage(stage: str, kwargs: dict, shown: list[str], log: Path, what: str, threads: int | None = None) -> float:
    """Run one stage of a run (runners/stages.py) in a child process with its output appended to
    LOG, headed by SHOWN, the `graphvla` command that does the same; seconds it took. Raises with
    the log's tail."""
    from ..stages import stage_process

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {shell_line(shown)}\n")
        f.flush()
        rc = stage_process(stage, kwargs, env=env, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {rc}); log {log}:\n{tail}")
    return time.perf_counter() - t0


def loss_curve(train_dir: Path) -> dict:
    """tag -> [[step, value], ...]: each step's losses ('loss/TERM', 'loss_total/STREAM') from the
    last checkpoint's history, which a resumed run carries on, so an interrupted run gives the
    uninterrupted curve. Steps older than that history (it keeps the last 1000) come from the
    TensorBoard logs, which hold means over each logging window instead."""
    ckpt = latest_checkpoint(train_dir)
    history = json.loads((ckpt / "trainer_state.json").read_text()).get("history_tail", []) if ckpt else []
    curves: dict[str, dict] = {}
    for rec in history:
        curves.setdefault(f"loss_total/{rec['stream']}", {})[int(rec["step"])] = float(rec["loss"])
        for term, v in (rec.get("losses") or {}).items():
            curves.setdefault(f"loss/{term}", {})[int(rec["step"])] = float(v)
    first = min((int(r["step"]) for r in history), default=None)
    if first is None or first > 1:
        for tag, points in _logged_means(train_dir).items():
            for step, v in points.items():
                if first is None or step < first:
                    curves.setdefault(tag, {})[step] = v
    return {tag: [[s, v] for s, v in sorted(points.items())] for tag, points in sorted(curves.items())}


def _logged_means(train_dir: Path) -> dict:
    """tag -> {step: value} from the run's TensorBoard logs (the last value of a step kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict] = {}
    for events in sorted((train_dir / "logs").rglob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name)):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith(("loss/", "loss_total/")):
                for ev in acc.Scalars(tag):
                    curves.setdefault(tag, {})[int(ev.step)] = float(ev.value)
    return curves


def write_cell(sweep: Sweep, run: Run, specs: tuple, data: str, out) -> None:
    """OUT/cells/CELL/seedN/cell.json. Called from one thread only: describing a run compiles its
    graph, and concurrent first imports of transformers' lazy modules fail ("cannot import name")."""
    d = run_dir(out, run)
    d.mkdir(parents=True, exist_ok=True)
    meta = describe_run(sweep, run, *specs, data_of(sweep, run, data), d)
    if sweep.cell_recording:
        label = sweep.cell_recording[run.cell]
        meta["recording"] = {"label": label, **sweep.recordings[label]["settings"]}
    write_text_atomic(d / "cell.json", json.dumps(meta, indent=2) + "\n")


RUN_LOCK = ".lock"  # held while a process trains or evaluates the run (several may share OUT: --only, --seed)


def execute_run(sweep: Sweep, run: Run, specs: tuple, data: str, out, threads: int | None = None) -> dict:
    """Train (or resume) and evaluate one run whose cell.json is written; returns its state. A
    finished run is left as is; one that another process holds is refused, not run twice."""
    from filelock import FileLock, Timeout

    d = run_dir(out, run)
    lock = FileLock(d / RUN_LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"{run.key}: another `graphvla sweep` process is running it ({d / RUN_LOCK} is held); "
                           f"left to that process") from None
    try:
        return _execute_locked(sweep, run, specs, data, d, threads)
    finally:
        lock.release()


def _execute_locked(sweep: Sweep, run: Run, specs: tuple, data: str, d: Path, threads: int | None) -> dict:
    state = read_state(d)
    if state.get("finished"):
        return state
    data = data_of(sweep, run, data)
    train_dir = d / "run"
    before = _checkpoint_step(train_dir)
    if before < int(specs[1].section("trainer")["max_steps"]):
        resume = before > 0
        shown = train_command(run, data, train_dir) + (["--resume"] if resume else [])
        stage = {"graph": run.graph, "sets": list(run.sets), "data": str(data), "run_dir": str(train_dir),
                 "resume": resume, "progress": False}
        seconds = _run_stage("train", stage, shown, d / "train.log", f"training {run.key}", threads)
        state["train_sessions"].append({"from_step": before, "to_step": _checkpoint_step(train_dir),
                                        "seconds": round(seconds, 1)})
        state["losses"] = loss_curve(train_dir)
        write_state(d, state)
    if "losses" not in state:
        state["losses"] = loss_curve(train_dir)
    e = sweep.eval
    stage = {"run_dir": str(train_dir), "eval_dir": str(d / "eval"), "protocol": e["protocol"],
             "episodes": int(e["episodes"]), "workers": int(e["workers"]), "tasks": e.get("tasks"),
             "buckets": e.get("buckets")}
    seconds = _run_stage("eval", stage, eval_command(sweep, train_dir, d / "eval"), d / "eval.log",
                         f"evaluating {run.key}", threads)
    state["eval_seconds"] = round(seconds, 1)
    state["finished"] = True
    write_state(d, state)
    return state


def execute_sweep(sweep: Sweep, runs: list[Run], specs: dict, data: str, out, workers: int = 1,
                  progress: bool = True, log=print) -> list[str]:
    """Run every unfinished run (`workers` side by side); returns the keys of runs that failed."""
    from tqdm.auto import tqdm

    todo = [r for r in runs if not read_state(run_dir(out, r)).get("finished")]
    for r in todo:
        write_cell(sweep, r, specs[r.key], data, out)
    failed = []
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"sweep {sweep.name}", unit="run",
               disable=not progress, dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            threads = threads_per_run(workers)
            futures = {pool.submit(execute_run, sweep, r, specs[r.key], data, out, threads): r for r in todo}
            for fut in as_completed(futures):
                run = futures[fut]
                try:
                    fut.result()
                except (RuntimeError, ValueError, OSError) as e:  # one run's failure stops no other run
                    failed.append(run.key)
                    log(f"error: {e}")
                bar.set_postfix_str(run.key)
                bar.update(1)
    finally:
        bar.close()
    return failed


SWEEP_JSON = "sweep.json"  # the resolved sweep, so `graphvla sweep --report DIR` needs only the output folder


def start_output(sweep: Sweep, base_spec, out, log=print, runs: list[Run] | None = None,
                 specs: dict | None = None, todo: list[Run] | None = None) -> Path:
    """Make the sweep's output folder OUT: a `data: {record: ...}` sweep records the protocol's
    demonstrations into OUT/data once (and trains on OUT/data.yaml from then on), and OUT/sweep.json
    keeps the resolved sweep. With RUNS and their SPECS (check_controls) whose cells use any
    recording but the base's alone (data axes), each distinct recording that a run of TODO (default: RUNS) needs is
    made once into OUT/recordings/LABEL/ and the cells are mapped to theirs. Returns OUT."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(sweep.data, dict):
        from ..protocol_data import record_protocol_data

        rec = sweep.data["record"]
        tasks = rec.get("tasks") or sweep.eval.get("tasks") or "MT50"
        protocol = rec.get("protocol") or "starvla-mt50"
        planned, cells = plan_recordings(sweep, runs or [], specs or {})
        several = bool(planned) and set(planned) != {label(recording(sweep, base_spec))}
        if several:
            needed = {cells[r.cell] for r in (todo if todo is not None else runs)}
            example = {cells[r.cell]: r for r in reversed(runs)}  # a run of each recording (its graph's size)
            for name, settings in planned.items():
                folder = out / RECORDINGS / name
                settings = {"protocol": protocol, "tasks": tasks, **settings}
                path = folder / "data.yaml"
                if name in needed:
                    run = example[name]
                    path = record_protocol_data(folder, specs[run.key][1], run.graph, tasks, settings["episodes"],
                                                int(rec.get("workers", 1)), log=log, protocol=settings["protocol"])
                sweep.recordings[name] = {"settings": settings, "data": str(path)}
            sweep.cell_recording = cells
        sweep.data = str(record_protocol_data(out, base_spec, sweep.base, tasks, int(rec.get("episodes", 20)),
                                              int(rec.get("workers", 1)), log=log,
                                              protocol=protocol)) if not several else \
            {"record": rec}
    write_text_atomic(out / SWEEP_JSON, json.dumps(sweep.to_dict(), indent=2) + "\n")
    return out


def read_output(out) -> Sweep:
    """The sweep whose output folder OUT is (its sweep.json)."""
    path = Path(out) / SWEEP_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no {SWEEP_JSON} there (not a `graphvla sweep` output folder)")
    return Sweep.from_dict(json.loads(path.read_text()))
