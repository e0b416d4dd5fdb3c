"""Loading a trained policy: `load_policy(RUN_OR_CHECKPOINT)` -> a ready `Policy`."""
from __future__ import annotations

import json
from pathlib import Path

from ..compiler.compile import compile_graph
from ..spec.loader import load_spec
from .policy import Policy
from .assets import localized_values
from .checkpoint import read_pipelines, resolve_checkpoint


def load_policy(path, device="cpu") -> Policy:
    """A Policy from a run directory (its latest checkpoint) or a checkpoint directory.

    Compiles the checkpoint's resolved spec for real, loads the safetensors weights strictly and
    the pipelines (preprocess.json, postprocess.json). Files the blocks read (tokenizers, processors, configs) come from the
    checkpoint's own copies (assets/), so a moved run loads; referenced base weights are checked
    (path, size, sha256) and a missing one is named. Refuses a checkpoint whose spec.yaml does not match the fingerprint in its
    graph.json, whose weights do not fit the graph, or whose normalization does not fit its ports."""
    from safetensors.torch import load_model

    ckpt = resolve_checkpoint(path)
    graph = json.loads((ckpt / "graph.json").read_text())
    spec = load_spec(str(ckpt / "spec.yaml"))
    if spec.fingerprint != graph.get("fingerprint"):
        raise ValueError(f"checkpoint {ckpt}: spec.yaml has fingerprint {spec.fingerprint[:16]}, but graph.json says "
                         f"{str(graph.get('fingerprint'))[:16]}; the spec was edited after training")
    origin = graph.get("spec_file")
    if origin and Path(origin).parent.is_dir():
        spec.file = origin  # files the checkpoint has no copy of resolve where the spec lived
    cg = compile_graph(_with_copied_assets(spec, ckpt), device=device)
    cg.spec = spec  # the graph's identity (name, fingerprint) is the trained spec's, wherever its files are now
    try:
        load_model(cg.model, str(ckpt / "model.safetensors"), strict=True, device=str(device))
    except RuntimeError as e:
        raise ValueError(f"checkpoint {ckpt}: weights do not fit graph {spec.name}: {e}") from None
    # the checkpoint's pipelines as saved (a run from before they were saved: migrated from normalization.json)
    preprocess, postprocess = read_pipelines(ckpt, cg)
    return Policy.from_compiled(cg, preprocess=preprocess, postprocess=postprocess)


def _with_copied_assets(spec, ckpt: Path):
    """A copy of `spec` whose `with:` paths point at the checkpoint's copies of those files."""
    import copy

    values = localized_values(ckpt)
    if not values:
        return spec
    local = copy.copy(spec)
    local.data = copy.deepcopy(spec.data)
    for (bid, key), path in values.items():
        local.data["blocks"][bid]["with"][key] = path
    return local
