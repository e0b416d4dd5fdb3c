"""`graphvla serve`: the policy server, and the serve-section options `graphvla eval` shares."""
from __future__ import annotations

import logging

import click

from .options import UserError, handles_errors, set_option


def serve_section(run: str | None, overrides, key_map_options) -> dict:
    """The checkpoint's `serve:` section with --set serve.* and --key-map applied, validated
    (runners/serve/section.py); a bad option is a usage error."""
    from ..runners.serve.section import serve_section as section_of

    try:
        return section_of(run, overrides, key_map_options)
    except ValueError as e:
        raise UserError(str(e)) from None


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
    from ..runners.serve.section import load_run_policy, serve_options

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
