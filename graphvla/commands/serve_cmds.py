"""`graphvla serve`: the policy server, and the serve-section options `graphvla eval` shares."""
from __future__ import annotations

import logging

import click
import yaml

from .options import UserError, handles_errors, set_option


def checkpoint_spec(run: str) -> dict:
    """The resolved spec saved with RUN (a run folder's latest checkpoint, a checkpoint, or a
    folder written by `graphvla export`, which keeps the checkpoint's spec.yaml)."""
    from pathlib import Path

    from ..runners.export import is_export_folder
    from ..policy.checkpoint import resolve_checkpoint

    spec = (Path(run) if is_export_folder(run) else resolve_checkpoint(run)) / "spec.yaml"
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


def load_run_policy(run: str):
    """The checkpoint's Policy, or the ExportedPolicy of an export folder (it holds the manifest)."""
    from ..runners.export import is_export_folder

    if is_export_folder(run):
        from ..runners.exported import load_exported

        return load_exported(run)
    from ..policy.loading import load_policy

    return load_policy(run)


def serve_options(section, host, port, api_key, max_batch, max_wait_ms, max_message_mb, seed=None, infer_workers=1):
    from ..runners.serve import ServeOptions

    return ServeOptions(host=host, port=port, api_key=api_key, infer_workers=infer_workers,
                        seed=seed if seed is not None else section.get("seed", 0),
                        max_batch=max_batch if max_batch is not None else section["max_batch"],
                        max_wait_ms=max_wait_ms if max_wait_ms is not None else section["max_wait_ms"],
                        max_message_mb=max_message_mb if max_message_mb is not None else section["max_message_mb"],
                        key_map=section.get("key_map") or {}, execute_steps=section.get("execute_steps"))


key_map_option = click.option("--key-map", "key_map", multiple=True, metavar="CLIENT_KEY=PORT",
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
@click.option("--seed", type=click.IntRange(0, 2 ** 64 - 1), default=None,
              help="seed of every client session's noise generator [serve.seed, 0]")
@click.option("--infer-workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="batches computed at once (2: the next batch is collected and runs while one computes)")
@key_map_option
@set_option
@handles_errors
def serve(run, host, port, api_key, max_batch, max_wait_ms, max_message_mb, seed, infer_workers, key_map, overrides):
    """Serve the policy in RUN (a run folder: its latest checkpoint; a checkpoint folder; or a folder
    written by `graphvla export`) over WebSocket + msgpack, wire-compatible with openpi-client."""
    from ..runners.serve import PolicyServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    section = serve_section(run, overrides, key_map)
    policy = load_run_policy(run)
    server = PolicyServer(policy, serve_options(section, host, port, api_key, max_batch, max_wait_ms, max_message_mb,
                                                seed, infer_workers))
    meta = server.metadata
    click.echo(f"serving {meta.get('name')} (fingerprint {str(meta.get('fingerprint'))[:16]}) on ws://{host}:{port}")
    click.echo(f"observation keys: {', '.join(meta['observation_keys'])}; health: http://{host}:{port}/healthz")
    server.run()
    click.echo("server stopped")


commands = [serve]
