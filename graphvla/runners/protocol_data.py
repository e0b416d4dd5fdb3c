"""Training data for a graph on the starVLA MT50 protocol: the protocol's scripted-expert
demonstrations recorded at the graph's image size into OUT/data, and OUT/data.yaml binding them to
the graph's ports. Used by `graphvla quickstart` and by a sweep whose `data:` says `record:`; the
recording is what `graphvla data metaworld --protocol starvla-mt50` does (the line is logged, so a
user can repeat it)."""
from __future__ import annotations

import shlex
from pathlib import Path

from ..fileio import write_text_atomic

PROTOCOL = "starvla-mt50"

DATA_YAML = """# written by `graphvla quickstart`: the recorded demonstrations, bound to the graph's ports
datasets:
  - path: {data}
    keys: {{images: [observation.images.corner2], state: {state}, actions: action, instruction: task}}
"""


def image_size(spec, graph) -> int:
    """The side of the graph's one square image port: what the recorder renders."""
    sizes = {tuple(p.get("size") or ()) for p in spec.inputs.values() if p.get("kind") == "image"}
    if len(sizes) != 1 or len(next(iter(sizes))) != 2 or len(set(next(iter(sizes)))) != 1:
        raise ValueError(f"graph '{graph}': the quickstart records one square camera; the graph's image inputs "
                         f"have sizes {sorted(sizes)}")
    return int(next(iter(sizes))[0])


def record_protocol_data(out, spec, graph: str, tasks: str, episodes: int, workers: int, log=print,
                         protocol: str = PROTOCOL) -> Path:
    """Record the protocol's demonstrations of `tasks` (comma-separated names, MT10, MT50 or buckets)
    into OUT/data at the graph's image size (skipped when already recorded) and bind them to the
    graph's ports in OUT/data.yaml; returns that file. protocol: starvla-mt50 (default) or
    lerobot-metaworld."""
    import warnings

    from ..data.protocol_record import record_protocol
    from ..sim import protocol_module
    from ..spec.schema import privileged_ports

    P = protocol_module(protocol)
    out = Path(out)
    size = image_size(spec, graph)
    state_key = "observation.environment_state" if privileged_ports(spec) else "observation.state"
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    if not (data_dir / "meta" / "info.json").exists():
        args = ["data", "metaworld", "--protocol", P.NAME, "-o", data_dir, "--tasks", tasks, "--episodes", episodes,
                "--size", size, "--workers", workers]
        log("$ graphvla " + " ".join(shlex.quote(str(a)) for a in args))
        warnings.filterwarnings("ignore", module="gymnasium")
        names = P.select(names=[t.strip() for t in (tasks or "MT50").split(",") if t.strip()])
        s = record_protocol(data_dir, names, int(episodes), size, workers=int(workers), log=log, protocol=P.NAME)
        log(f"{data_dir}: {s['episodes']} episodes, {s['frames']} frames from {len(names)} task(s) of {P.NAME}; "
            f"{sum(s['failed'].values())} scene(s) the expert failed were skipped")
    data_yaml = out / "data.yaml"
    write_text_atomic(data_yaml, DATA_YAML.format(data=data_dir, state=state_key))
    return data_yaml
