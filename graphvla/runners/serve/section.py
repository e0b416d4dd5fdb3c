"""What a served run needs besides its weights: the checkpoint's `serve:` section with the command
line's serve.* and key-map overrides applied, the ServeOptions built from it, and the policy of a
run, checkpoint or export folder. Used by `graphvla serve`, `graphvla eval` and the sweep's cells."""
from __future__ import annotations

from pathlib import Path

import yaml


def checkpoint_spec(run: str) -> dict:
    """The resolved spec saved with RUN (a run folder's latest checkpoint, a checkpoint, or a
    folder written by `graphvla export`, which keeps the checkpoint's spec.yaml)."""
    from ...policy.checkpoint import resolve_checkpoint
    from ..export import is_export_folder

    spec = (Path(run) if is_export_folder(run) else resolve_checkpoint(run)) / "spec.yaml"
    return (yaml.safe_load(spec.read_text()) or {}) if spec.exists() else {}


def serve_section(run: str | None, overrides=(), key_map_options=()) -> dict:
    """The checkpoint's `serve:` section with `serve.KEY=VALUE` overrides and `CLIENT_KEY=PORT`
    key-map entries applied, validated and completed with defaults. Bad input: ValueError."""
    from ...spec.sections import SERVE, section_defaults

    section = dict((checkpoint_spec(run) if run else {}).get("serve") or {})
    for text in overrides:
        if "=" not in text or not text.startswith("serve."):
            raise ValueError(f"--set {text}: here only serve.* keys can be set (e.g. serve.key_map.prompt=instruction)")
        dotted, raw = text.split("=", 1)
        keys = dotted.split(".")[1:]
        node = section
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None
    for text in key_map_options:
        if "=" not in text:
            raise ValueError(f"--key-map {text}: expected CLIENT_KEY=PORT (or PORT[i], or CLIENT_KEY= to ignore)")
        client_key, port = text.split("=", 1)
        section.setdefault("key_map", {})[client_key] = port.strip() or None
    unknown = set(section) - set(SERVE["properties"])
    if unknown:
        raise ValueError(f"serve.{sorted(unknown)[0]}: unknown key (known: {', '.join(SERVE['properties'])})")
    return section_defaults("serve", section)


def load_run_policy(run: str):
    """The checkpoint's Policy, or the ExportedPolicy of an export folder (it holds the manifest)."""
    from ..export import is_export_folder

    if is_export_folder(run):
        from ..exported import load_exported

        return load_exported(run)
    from ...policy.loading import load_policy

    return load_policy(run)


def serve_options(section, host, port, api_key, max_batch, max_wait_ms, max_message_mb, seed=None, infer_workers=1):
    """ServeOptions from a serve section; an argument that is not None wins over the section."""
    from .server import ServeOptions

    return ServeOptions(host=host, port=port, api_key=api_key, infer_workers=infer_workers,
                        seed=seed if seed is not None else section.get("seed", 0),
                        max_batch=max_batch if max_batch is not None else section["max_batch"],
                        max_wait_ms=max_wait_ms if max_wait_ms is not None else section["max_wait_ms"],
                        max_message_mb=max_message_mb if max_message_mb is not None else section["max_message_mb"],
                        key_map=section.get("key_map") or {}, execute_steps=section.get("execute_steps"),
                        temporal_ensemble=section.get("temporal_ensemble"))
