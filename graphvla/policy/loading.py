"""Loading a trained policy: `load_policy(RUN_OR_CHECKPOINT)` -> a ready `Policy`."""
from __future__ import annotations

import json
from pathlib import Path

from ..blocks.base import parameters_on_meta
from ..compiler.compile import compile_graph
from ..spec.loader import load_spec
from .policy import Policy
from .assets import check_references, has_references, localized_values
from .checkpoint import read_pipelines, resolve_checkpoint


def load_policy(path, device="cpu") -> Policy:
    """A Policy from a run directory (its latest checkpoint) or a checkpoint directory.

    Compiles the checkpoint's resolved spec with the parameters on meta, loads the safetensors
    weights strictly into them, once (load_weights), and the pipelines (preprocess.json,
    postprocess.json). Files the blocks read (tokenizers, processors, configs) come from the
    checkpoint's own copies (assets/), so a moved run loads; base weights kept by reference are
    read only when the checkpoint lacks some of a block's weights (then checked: path, size, sha256,
    and a missing one is named). Refuses a checkpoint whose spec.yaml does not match the fingerprint in its
    graph.json, whose weights do not fit the graph, or whose normalization does not fit its ports."""
    ckpt = resolve_checkpoint(path)
    graph = json.loads((ckpt / "graph.json").read_text())
    spec = load_spec(str(ckpt / "spec.yaml"))
    if spec.fingerprint != graph.get("fingerprint"):
        raise ValueError(f"checkpoint {ckpt}: spec.yaml has fingerprint {spec.fingerprint[:16]}, but graph.json says "
                         f"{str(graph.get('fingerprint'))[:16]}; the spec was edited after training")
    origin = graph.get("spec_file")
    if origin and Path(origin).parent.is_dir():
        spec.file = origin  # files the checkpoint has no copy of resolve where the spec lived
    local = _with_copied_assets(spec, ckpt)
    # the blocks are built with their parameters on meta (their buffers, tokenizers and processors
    # for real): no weight is allocated, initialized or read from a base model's files; the
    # checkpoint's tensors are then loaded once, in place of the meta ones
    with parameters_on_meta():
        cg = compile_graph(local, device=device)
    cg.spec = spec  # the graph's identity (name, fingerprint) is the trained spec's, wherever its files are now
    load_weights(cg, ckpt, device, spec_dir=local.dir)
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


# weights ----------------------------------------------------------------------------------------
def load_weights(cg, ckpt: Path, device="cpu", spec_dir: Path | None = None) -> None:
    """Replace the meta parameters of `cg.model` (compiled under parameters_on_meta) by the
    checkpoint's tensors, read once and assigned (no copy into initialized weights).

    Every parameter and persistent buffer comes from model.safetensors, converted to the dtype the
    block declares (as copying into built weights did). Tied weights (an LM head sharing the token
    embeddings), which safetensors stores once, are tied again. Non-persistent buffers (rotary
    inv_freq, index tables) are the constructors' own, built for real. Missing frozen weights of a
    block whose files reference base weights kept outside the run (assets.json) are read from those
    files, after checking them (a missing or changed one is named with its sha256); any other
    missing tensor (a trained one, a LoRA adapter, another block's): the checkpoint does not fit."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    model = cg.model
    expected = model.state_dict(keep_vars=True)  # every name of a tied tensor, on meta
    state = load_file(str(ckpt / "model.safetensors"), device=str(device))
    unexpected = sorted(set(state) - set(expected))
    aliases = {}
    for name, t in expected.items():
        aliases.setdefault(id(t), []).append(name)
    for names in aliases.values():
        stored = next((n for n in names if n in state), None)
        for n in names:
            if stored is not None and n not in state:
                state[n] = state[stored]
    missing = [n for n in expected if n not in state]
    # only what a base file can hold may be missing: frozen weights (not LoRA adapters, not trained
    # rows such as added action tokens) of a block whose files reference base weights
    trained = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    unfit = [n for n in missing if n in trained or ".lora_" in n or not has_references(ckpt, n.split(".", 1)[0])]
    if unexpected or unfit:
        raise ValueError(f"checkpoint {ckpt}: weights do not fit graph {cg.name}: "
                         + "; ".join(x for x in (_names("missing", unfit), _names("unexpected", unexpected)) if x))
    for bid in sorted({n.split(".", 1)[0] for n in missing}):  # base weights kept by reference
        check_references(ckpt, bid)
        built = _build_block(cg, bid, device, spec_dir).state_dict()
        for n in missing:
            if n.split(".", 1)[0] == bid:
                state[n] = built[n.split(".", 1)[1]]
    for name, t in expected.items():
        if state[name].dtype != t.dtype and t.dtype.is_floating_point == state[name].dtype.is_floating_point:
            state[name] = state[name].to(t.dtype)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {ckpt}: weights do not fit graph {cg.name}: {e}") from None
    for names in aliases.values():  # load_state_dict wraps each name in its own Parameter: share one
        first = _get(model, names[0])
        for n in names[1:]:
            _set(model, n, first)
    left = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    left += [n for n, b in model.named_buffers(remove_duplicate=False) if b.is_meta]
    if left:
        raise ValueError(f"checkpoint {ckpt}: no value for {_names('tensors', left)} of graph {cg.name}")


def _names(what: str, names: list) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return f"{what} {shown}"


def _get(module, name: str):
    *path, leaf = name.split(".")
    for p in path:
        module = getattr(module, p)
    return getattr(module, leaf)


def _set(module, name: str, value) -> None:
    *path, leaf = name.split(".")
    for p in path:
        module = getattr(module, p)
    if leaf in module._parameters:
        module._parameters[leaf] = value
    else:
        module._buffers[leaf] = value


def _build_block(cg, bid: str, device, spec_dir):
    """Block `bid` built for real as training built it, its base weights read from its files."""
    import torch

    from ..blocks.base import BuildContext
    from ..compiler.build import with_lora

    node = cg.block(bid)
    with torch.device(device):
        module = node.cls(node.params, cg.port_info[bid], BuildContext(bid, spec_dir=Path(spec_dir or cg.spec.dir), device=device))
        with_lora(module, bid, {"train": node.train})
    return module
