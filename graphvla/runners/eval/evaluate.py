"""`graphvla eval RUN`: a run evaluated in closed loop through the policy server. The server runs
in a thread of this process unless a running one is given; the episodes reach it through the
client, so what is measured is what any openpi-style client gets. Results go to OUT/results.json
(and results.md for a protocol, GIFs unless turned off).

`evaluate_run_protocol` runs a published protocol's episodes (runners/eval/protocol.py);
`evaluate_run_suite` GraphVLA's own Meta-World suite (runners/eval/runner.py)."""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path

from ...fileio import write_text_atomic
from ...policy.run_data import run_datasets


class ProtocolAdapter:
    """Builds a protocol worker's benchmark adapter from the server's metadata (picklable, so
    worker processes get it): --execute if given, else the graph's serve.execute_steps if it
    declares one, else the adapter's own `actions.execute`."""

    def __init__(self, name: str, overrides: dict, execute: int | None, declared: bool):
        self.name, self.overrides, self.execute, self.declared = name, dict(overrides), execute, declared

    def __call__(self, metadata: dict):
        from ...client import load_adapter

        overrides = dict(self.overrides)
        steps = self.execute or (metadata.get("execute_steps") if self.declared else None)
        if steps:
            overrides["actions.execute"] = int(steps)
        return load_adapter(self.name, overrides)


def default_out_dir(run, name: str) -> Path:
    """RUN/eval-NAME for a run folder, else ./eval-NAME."""
    return Path(run) / f"eval-{name}" if run and Path(run).is_dir() else Path(f"eval-{name}")


@contextmanager
def policy_server(run, server: str | None, section: dict, max_batch: int | None):
    """The URL of SERVER, or of RUN's policy served from a thread of this process for as long as
    the block runs (with `max_batch` requests per forward; None: the section's)."""
    if server is not None:
        yield server, False
        return
    from ..serve import ServerThread
    from ..serve.section import load_run_policy, serve_options

    thread = ServerThread(load_run_policy(run), serve_options(section, "127.0.0.1", 0, None, max_batch, None, None))
    thread.start()
    try:
        yield thread.url, True
    finally:
        thread.stop()


def training_scenes(datasets: list) -> dict | None:
    """task -> scene vectors of the recorded demonstrations in DATASETS; None (unknown) unless some
    dataset lists its episodes."""
    from ...data.lerobot import read_episode_records
    from ...data.protocol_record import recorded_scene_vectors

    scenes = None
    for d in datasets:
        if read_episode_records(d):  # v2.x episodes.jsonl or v3.0 meta/episodes/
            scenes = scenes or {}
            for task, vectors in recorded_scene_vectors(d).items():
                scenes.setdefault(task, []).extend(vectors)
    return scenes


def validation_plan(datasets: list, protocol: str, tasks: list[str], episodes: int, log=print) -> dict[str, list[int]]:
    """task -> its validation scenes (at most EPISODES), from the recordings in DATASETS. Refused
    without a recording that lists its episodes' scenes, or when a task has no scene left."""
    from ...data.protocol_record import recorded_scenes, validation_scenes

    recorded: dict[str, set[int]] = {}
    for d in datasets:
        for task, found in recorded_scenes(d).items():
            recorded.setdefault(task, set()).update(found)
    if not recorded:
        raise ValueError(f"--validation needs the {protocol} recording the run was trained on, to keep its scenes "
                         f"out (pass --data DATA; found {[str(d) for d in datasets] or 'none'})")
    plan = {t: validation_scenes(protocol, t, recorded.get(t, set()), episodes) for t in tasks}
    empty = [t for t, s in plan.items() if not s]
    if empty:
        raise ValueError(f"--validation: no scene of {', '.join(empty)} is left outside the protocol's evaluation "
                         f"and the recording; leave {'it' if len(empty) == 1 else 'them'} out of --tasks")
    short = {t: len(s) for t, s in plan.items() if len(s) < episodes}
    if short:
        log(f"validation: fewer than {episodes} free scenes for {len(short)} task(s): "
            + ", ".join(f"{t} {n}" for t, n in short.items()))
    return plan


def protocol_label(summary: dict) -> str:
    return "GraphVLA (privileged upper bound)" if summary["config"].get("privileged") else "GraphVLA"


def evaluate_run_protocol(run, tasks: list[str], episodes: int, workers: int, out_dir, *, data_dir=None,
                          server: str | None = None, api_key: str | None = None, adapter: str | None = None,
                          execute: int | None = None, adapter_overrides: dict | None = None, gifs: bool = True,
                          section: dict | None = None, log=print, protocol: str = "starvla-mt50",
                          validation: bool = False, threads: int | None = None) -> dict:
    """The protocol's episodes of TASKS for RUN (or a running SERVER); writes OUT_DIR/results.json
    and results.md and returns the summary. The training scenes come from DATA_DIR, else from
    RUN/data.json. SECTION: RUN's serve section (None: the checkpoint's own). validation: instead,
    up to EPISODES validation scenes per task (`protocol_record.validation_scenes`), which needs
    the recording to know which scenes it used. THREADS: torch's CPU threads for the local
    server's forward passes (None: as they are); recorded as config.inference_threads, because the
    closed-loop episodes depend on it."""
    from ...client import PolicyClient
    from .protocol import evaluate_protocol, format_protocol_markdown

    if section is None:
        from ..serve.section import serve_section

        section = serve_section(run) if run else {}
    declared = bool(section.get("execute_steps")) or (run is None)
    make_adapter = ProtocolAdapter(adapter or "metaworld", adapter_overrides or {}, execute, declared)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = [data_dir] if data_dir else (run_datasets(run) if run else [])
    from ...data.protocol_record import check_recording_protocol

    check_recording_protocol(datasets, protocol)  # before any server starts
    scenes = training_scenes(datasets)
    chosen = validation_plan(datasets, protocol, tasks, episodes, log) if validation else None
    # one request at a time: batched forwards may round differently, and results must not depend
    # on how many workers' requests happened to meet
    with forward_threads(threads) as threads_in_use, policy_server(run, server, section, 1) as (url, local):
        connect = partial(PolicyClient, url, None, api_key=None if local else api_key)
        with connect() as probe:
            meta = probe.metadata
        graph = {"graph": meta.get("name"), "fingerprint": meta.get("fingerprint"),
                 "privileged": bool(meta.get("privileged")),
                 "execute_steps": getattr(make_adapter(meta).scheduler, "execute", None),
                 "inference_threads": threads_in_use if local else None}
        summary = evaluate_protocol(connect, make_adapter, tasks, episodes, workers, out_dir, gifs=gifs,
                                    training_scenes=scenes, graph=graph, log=log, protocol=protocol,
                                    validation=chosen)
    label = protocol_label(summary)
    write_text_atomic(out_dir / "results.md", format_protocol_markdown(summary, label=f"{label} {graph['graph']}"))
    return summary


@contextmanager
def forward_threads(threads: int | None):
    """torch's CPU threads set to THREADS (None: left as they are) while the local server runs, and
    given back after, so an in-process caller (a test, a notebook) keeps its own count. Yields the
    count in effect."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if threads is not None:
            torch.set_num_threads(before)


def evaluate_run_suite(run, tasks: list[str], episodes: int, seed_offset: int, out_dir, *, adapter,
                       server: str | None = None, api_key: str | None = None, section: dict | None = None,
                       max_steps: int | None = None, gifs: bool = True, log=print) -> dict:
    """GraphVLA's own Meta-World suite for RUN (or a running SERVER) with the benchmark ADAPTER;
    writes OUT_DIR/results.json (and a GIF per task) and returns the summary."""
    from ...client import PolicyClient
    from .runner import evaluate_metaworld

    if section is None and server is None:
        from ..serve.section import serve_section

        section = serve_section(run)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with policy_server(run, server, section, None) as (url, local):
        with PolicyClient(url, None, api_key=None if local else api_key) as client:
            reset = client.reset if client.metadata.get("server") == "graphvla" else None
            return evaluate_metaworld(client.infer, client.metadata, adapter, tasks, episodes, seed_offset, out_dir,
                                      max_steps=max_steps, gifs=gifs, reset=reset, log=log)
