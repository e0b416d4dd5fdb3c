"""Simulators and the published evaluation protocols built on them."""

# protocol name -> the module of graphvla.sim that implements it (environments, scenes, camera)
PROTOCOL_MODULES = {"starvla-mt50": "starvla_mt50", "lerobot-metaworld": "lerobot_metaworld"}


def protocol_module(name: str):
    """The module implementing protocol `name`; an unknown name is an error listing the protocols."""
    import importlib

    if name not in PROTOCOL_MODULES:
        raise ValueError(f"unknown protocol '{name}' (known: {', '.join(PROTOCOL_MODULES)})")
    return importlib.import_module(f"{__name__}.{PROTOCOL_MODULES[name]}")
