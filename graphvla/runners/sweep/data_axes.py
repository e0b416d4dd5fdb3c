"""Data axes: a sweep's cells may differ in their recording (image size, demonstrations per task),
not only in their graph.

A run's recording is the sweep's `data: {record: ...}` with its variants' `data.record.KEY`
overrides, and its image size is always the size of the cell graph's one square image input (the
recorder renders what the graph reads). So a variant that changes the image size sets
`inputs.images.size` (a graph change) and the recording follows; a variant may also write
`data.record.size`, which must then equal its graph's size.

The control: each run's recording is compared with the base's (the base graph's size, the sweep's
settings) and every differing setting `data.record.KEY` must lie under the cell's `changes:`, like
the graph's diff rows. When the runs use any recording but the base's alone, each distinct recording is made
once into OUT/recordings/LABEL/ (LABEL: '64px-20ep') and shared by the cells that use it;
sweep.json and the report say which recording each cell used. A sweep whose cells all use the
base's recording keeps the single OUT/data folder."""
from __future__ import annotations

from .config import DATA_KEYS, DATA_PREFIX, Run, Sweep
from .control import within

DEFAULT_EPISODES = 20
RECORDINGS = "recordings"  # OUT/recordings/LABEL/{data/, data.yaml}


def recording(sweep: Sweep, spec, record_sets=()) -> dict:
    """The recording settings of a run whose graph is SPEC: {'size', 'episodes'}, the image size
    being the graph's, the episodes the sweep's unless a variant sets them."""
    from ..protocol_data import image_size

    rec = sweep.data["record"]
    own = {o.text.split("=", 1)[0][len(DATA_PREFIX):]: int(o.text.split("=", 1)[1]) for o in record_sets}
    settings = {"size": image_size(spec, spec.name), "episodes": int(rec.get("episodes", DEFAULT_EPISODES))}
    settings.update({k: v for k, v in own.items() if k == "episodes"})
    return settings


def label(settings: dict) -> str:
    return f"{settings['size']}px-{settings['episodes']}ep"


def data_refusals(sweep: Sweep, run: Run, base_spec, cell_spec) -> list[str]:
    """Why a run's recording is not controlled (empty when it is): a recording setting that differs
    from the base's along no declared axis, or a `data.record.size` its graph does not read."""
    if not isinstance(sweep.data, dict):
        return []
    from ..protocol_data import image_size

    problems = []
    for o in run.record:
        key, value = o.text.split("=", 1)
        if key == DATA_PREFIX + "size" and int(value) != image_size(cell_spec, run.graph):
            size = image_size(cell_spec, run.graph)
            problems.append(f"cell '{run.cell}' (seed {run.seed}) sets {key} {value}, but its graph's image input is "
                            f"{size}x{size}; the recording is made at the graph's size: set "
                            f"inputs.images.size: [{value}, {value}] in the same variant")
    base, cell = recording(sweep, base_spec), recording(sweep, cell_spec, run.record)
    for key in DATA_KEYS:
        path = DATA_PREFIX + key
        if cell[key] != base[key] and not within(path, run.allowed):
            problems.append(f"cell '{run.cell}' (seed {run.seed}) is trained on demonstrations recorded with {path} "
                            f"{cell[key]} (the base: {base[key]}), which its axes do not declare (changes: "
                            f"{', '.join(run.allowed)}); add {path} to the axis's `changes:` if it is meant"
                            + ("; the recording's image size follows the graph's image input" if key == "size" else ""))
    return problems


def plan_recordings(sweep: Sweep, runs: list[Run], specs: dict) -> tuple[dict, dict]:
    """(label -> settings, cell -> label) of every run; a sweep trained on a dataset has none."""
    if not isinstance(sweep.data, dict):
        return {}, {}
    settings, cells = {}, {}
    for run in runs:
        s = recording(sweep, specs[run.key][1], run.record)
        settings.setdefault(label(s), s)
        cells[run.cell] = label(s)
    return settings, cells
