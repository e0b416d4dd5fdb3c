"""Block types by registered name ('head.query_transformer'). Built-in blocks register on import of their
module; third-party packages add theirs through the `graphvla.blocks` entry-point group
(an entry point names a module, which registers on import, or a Block subclass)."""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import sys
from pathlib import Path

from .base import Block

log = logging.getLogger(__name__)

# Modules of the built-in block library; importing them registers their blocks.
BUILTIN_MODULES = [
    "graphvla.blocks.aux.future_obs",
    "graphvla.blocks.aux.lm_loss",
    "graphvla.blocks.backbones.hf_vlm",
    "graphvla.blocks.backbones.paligemma",
    "graphvla.blocks.backbones.smolvla_vlm",
    "graphvla.blocks.backbones.world_model",
    "graphvla.blocks.encoder.efficientnet_lite",
    "graphvla.blocks.encoder.resnet",
    "graphvla.blocks.encoder.resnet_keypoints",
    "graphvla.blocks.encoders",
    "graphvla.blocks.fast",
    "graphvla.blocks.glue.fuse",
    "graphvla.blocks.glue.layer_projection",
    "graphvla.blocks.glue.projector",
    "graphvla.blocks.glue.select_layers",
    "graphvla.blocks.glue.state_text",
    "graphvla.blocks.heads.act",
    "graphvla.blocks.heads.diffusion_unet",
    "graphvla.blocks.heads.dual_system",
    "graphvla.blocks.heads.fast",
    "graphvla.blocks.heads.flow_matching",
    "graphvla.blocks.heads.gr00t_flow_matching",
    "graphvla.blocks.heads.layerwise_discrete_diffusion",
    "graphvla.blocks.heads.layerwise_fm",
    "graphvla.blocks.heads.mlp",
    "graphvla.blocks.heads.mlp_resnet",
    "graphvla.blocks.heads.pi0",
    "graphvla.blocks.heads.pi05",
    "graphvla.blocks.heads.query_transformer",
    "graphvla.blocks.heads.smolvla_expert",
]

# Old type names -> the type they were renamed to. A spec (or a run's spec.yaml) with an old name
# validates, compiles and loads exactly as before (its data, and so its fingerprint, are unchanged),
# with a warning naming the new type. Renamed because the old name claimed a published model the block
# is not (docs/heads.md, "Names and parity").
ALIASES: dict[str, str] = {
    "head.oft": "head.query_transformer",  # a learned-query transformer, not OpenVLA-OFT / starVLA QwenOFT
}


_REGISTRY: dict[str, type[Block]] = {}
_loaded = False
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def register(cls: type[Block]) -> type[Block]:
    """Class decorator: make a Block subclass available under its `type_name`."""
    name = getattr(cls, "type_name", "")
    if not (isinstance(cls, type) and issubclass(cls, Block)):
        raise TypeError(f"{cls!r} is not a graphvla Block subclass")
    if not TYPE_NAME.match(name or ""):
        raise ValueError(f"block type name {name!r} of {cls.__qualname__} must look like 'family.name'")
    other = _REGISTRY.get(name)
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"block type '{name}' registered twice: {other.__module__}.{other.__qualname__} and {cls.__module__}.{cls.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _load_all():
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    for ep in importlib.metadata.entry_points(group="graphvla.blocks"):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not take the whole tool down
            log.warning("could not load block plugin %s (%s): %s", ep.name, ep.value, e)
            continue
        if isinstance(obj, type) and issubclass(obj, Block):
            register(obj)


def registered(aliases: bool = False) -> dict[str, type[Block]]:
    """Every block type by name; with aliases, the old names of renamed types too (what a spec may
    say: validation, the DAG and diffs take them; listings and `graphvla blocks` show current names)."""
    _load_all()
    types = dict(_REGISTRY)
    if aliases:
        types.update({old: _REGISTRY[new] for old, new in ALIASES.items() if new in _REGISTRY and old not in _REGISTRY})
    return dict(sorted(types.items()))


def renamed(name) -> str | None:
    """The current name of an old block type name, else None (a registered plugin may reuse an old name)."""
    if not isinstance(name, str) or name not in ALIASES:
        return None
    _load_all()
    return None if name in _REGISTRY else ALIASES[name]


def defining_file(cls: type[Block]) -> str:
    """Where a block type is defined: 'graphvla/blocks/heads/mlp.py' for a built-in (relative to the
    installed package's parent), the absolute path of its module for a plugin, or the module's
    name when it has no file (a class made at run time)."""
    module = sys.modules.get(cls.__module__)
    if getattr(module, "__file__", None) is None:
        return f"<module {cls.__module__}>"
    path = Path(module.__file__).resolve()
    package_parent = Path(__file__).resolve().parents[2]
    return path.relative_to(package_parent).as_posix() if path.is_relative_to(package_parent) else str(path)


def get_block_type(name: str) -> type[Block]:
    types = registered(aliases=True)
    if name not in types:
        from ..errors import did_you_mean, known_list

        hint = did_you_mean(name, types) or known_list(types)
        raise KeyError(f"unknown block type '{name}' ({hint})")
    return types[name]
