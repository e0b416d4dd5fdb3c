"""Serving commands: `graphvla serve` (policy server) and `graphvla eval` (closed-loop evaluation)."""
from __future__ import annotations

import logging
from pathlib import Path

import click
import yaml

from .options import UserError, handles_errors, set_option


def checkpoint_spec(run: str) -> dict:
    """The resolved spec saved with RUN (a run folder's latest checkpoint, or a checkpoint)."""
    from ..runners.train.checkpoint import resolve_checkpoint

    spec = resolve_checkpoint(run) / "spec.yaml"
    return (yaml.safe_load(spec.read_text()) or {}) if spec.exists() else {}


def serve_section(run: str | None, overrides, key_map_options) -> dict:
    """The checkpoint's `serve:` section with --set serve.* and --key-map applied, validated."""
    from ..spec.sections import SERVE, section_defaults

    section = dict((checkpoint_spec(run) if run else {}).get("serve") or {})
    for text in overrides:
        if "=" not in text or not text.startswith("serve."):
            raise UserError(f"--set {text}: here only serve.* keys can be set (e.g. serve.key_map.prompt=instruction)")
        dotted, raw = text.split("=", 1)
        keys = dotted.split(".")[1:]
        node = section
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None
    for text in key_map_options:
        if "=" not in text:
            raise UserError(f"--key-map {text}: expected CLIENT_KEY=PORT (or PORT[i], or CLIENT_KEY= to ignore)")
        client_key, port = text.split("=", 1)
        section.setdefault("key_map", {})[client_key] = port.strip() or None
    unknown = set(section) - set(SERVE["properties"])
    if unknown:
        raise UserError(f"serve.{sorted(unknown)[0]}: unknown key (known: {', '.join(SERVE['properties'])})")
    return section_defaults("serve", section)


def _load_policy(run: str):
    from ..runners.loading import load_policy

    return load_policy(run)


def _options(section, host, port, api_key, max_batch, max_wait_ms, max_message_mb):
    from ..runners.serve import ServeOptions

    return ServeOptions(host=host, port=port, api_key=api_key,
                        max_batch=max_batch if max_batch is not None else section["max_batch"],
                        max_wait_ms=max_wait_ms if max_wait_ms is not None else section["max_wait_ms"],
                        max_message_mb=max_message_mb if max_message_mb is not None else section["max_message_mb"],
                        key_map=section.get("key_map") or {})


_key_map_option = click.option("--key-map", "key_map", multiple=True, metavar="CLIENT_KEY=PORT",
                               help="map an observation key to an input port, PORT[i] for view i (repeatable)")


@click.command()
@click.argument("run", type=click.Path(exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on (0.0.0.0: all)")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port (0: a free one)")
@click.option("--api-key", envvar="GRAPHVLA_API_KEY", default=None,
              help="require 'Authorization: Api-Key KEY' (or set GRAPHVLA_API_KEY)")
@click.option("--max-batch", type=int, default=None, help="most requests per batched forward (1: no batching) [8]")
@click.option("--max-wait-ms", type=float, default=None, help="how long a batch waits for more requests [2]")
@click.option("--max-message-mb", type=float, default=None, help="largest accepted request [64]")
@_key_map_option
@set_option
@handles_errors
def serve(run, host, port, api_key, max_batch, max_wait_ms, max_message_mb, key_map, overrides):
    """Serve the policy in RUN (a run folder: its latest checkpoint; or a checkpoint folder) over
    WebSocket + msgpack, wire-compatible with openpi-client."""
    from ..runners.serve import PolicyServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    section = serve_section(run, overrides, key_map)
    policy = _load_policy(run)
    server = PolicyServer(policy, _options(section, host, port, api_key, max_batch, max_wait_ms, max_message_mb))
    meta = server.metadata
    click.echo(f"serving {meta.get('name')} (fingerprint {str(meta.get('fingerprint'))[:16]}) on ws://{host}:{port}")
    click.echo(f"observation keys: {', '.join(meta['observation_keys'])}; health: http://{host}:{port}/healthz")
    server.run()
    click.echo("server stopped")


@click.command(name="eval")
@click.argument("run", required=False, type=click.Path(exists=True))
@click.option("--suite", type=click.Choice(["metaworld"]), default="metaworld", show_default=True)
@click.option("--tasks", default="mt10", show_default=True, help="comma-separated task names, or 'mt10'")
@click.option("--episodes", type=int, default=10, show_default=True, help="episodes per task")
@click.option("--seed-offset", type=int, default=100000, show_default=True,
              help="episode i uses env seed OFFSET+i; the default lies above every seed `graphvla data metaworld` "
                   "uses unless it was given --seed near it")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="the recorded dataset: refuse eval seeds that a demonstration of the same task used")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="folder for results.json and one GIF per task [RUN/eval-SUITE]")
@click.option("--server", default=None, help="use a running server (ws://host:port) instead of starting one")
@click.option("--api-key", envvar="GRAPHVLA_API_KEY", default=None)
@click.option("--adapter", default=None, help="benchmark adapter: a name in graphvla/configs/benchmarks or a YAML path [SUITE]")
@click.option("--execute", type=int, default=None, help="execute K of the H predicted actions before re-querying")
@click.option("--adapter-set", "adapter_sets", multiple=True, metavar="KEY=VALUE",
              help="override an adapter key, e.g. actions.ensemble={decay: 0.01} (repeatable)")
@click.option("--max-steps", type=int, default=None, help="episode length cap [from the adapter's env.max_steps]")
@click.option("--no-gif", is_flag=True, help="do not record GIFs")
@_key_map_option
@set_option
@handles_errors
def eval_cmd(run, suite, tasks, episodes, seed_offset, data_dir, out, server, api_key, adapter, execute, adapter_sets,
             max_steps, no_gif, key_map, overrides):
    """Evaluate RUN in closed loop on a simulated suite through the policy server; print the
    success rate per task with a 95% Wilson interval and write results.json + GIFs."""
    from ..client import PolicyClient, load_adapter
    from ..runners.eval.runner import evaluate_metaworld, format_table
    from ..runners.serve import ServerThread

    if not run and not server:
        raise UserError("give a RUN folder or --server ws://HOST:PORT")
    if episodes < 1:
        raise UserError("--episodes must be >= 1")
    from ..sim.metaworld import MT10

    task_list = MT10 if tasks.strip().lower() == "mt10" else [t.strip() for t in tasks.split(",") if t.strip()]
    from ..sim.metaworld import _check_task

    for task in task_list:  # fail before any episode runs
        _check_task(task)
    if data_dir:
        from ..runners.eval.runner import check_disjoint_seeds

        check_disjoint_seeds(data_dir, task_list, seed_offset, episodes)
    adapter_overrides = {"actions.execute": execute} if execute else {}
    for text in adapter_sets:
        if "=" not in text:
            raise UserError(f"--adapter-set {text}: expected KEY=VALUE, e.g. actions.clip=[-1, 1]")
        key, raw = text.split("=", 1)
        adapter_overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    adapter_obj = load_adapter(adapter or suite, adapter_overrides)
    out_dir = Path(out) if out else (Path(run) / f"eval-{suite}" if run and Path(run).is_dir() else Path(f"eval-{suite}"))
    out_dir.mkdir(parents=True, exist_ok=True)

    thread = None
    if server is None:
        section = serve_section(run, overrides, key_map)
        thread = ServerThread(_load_policy(run), _options(section, "127.0.0.1", 0, None, None, None, None)).start()
        server = thread.url
    try:
        with PolicyClient(server, None, api_key=api_key if thread is None else None) as client:
            reset = client.reset if client.metadata.get("server") == "graphvla" else None
            summary = evaluate_metaworld(client.infer, client.metadata, adapter_obj, task_list, episodes, seed_offset,
                                         out_dir, max_steps=max_steps, gifs=not no_gif, reset=reset,
                                         log=lambda m: click.echo(m, err=True))
    finally:
        if thread is not None:
            thread.stop()
    click.echo(format_table(summary))
    click.echo(f"wrote {out_dir / 'results.json'}" + ("" if no_gif else f" and {len(task_list)} GIFs"))


commands = [serve, eval_cmd]
