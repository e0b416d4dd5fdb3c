"""The processor-step contract and the pipeline that runs steps in graph order.

A step reads named values of a batch and writes named values back: a collated batch is a dict
key -> value (tensors batch first, lists of B strings for text). Keys are graph input ports
(`images`, `state`, `actions`) or the ports a block's step makes, named `BLOCK.PORT`
(`vlm.input_ids`), which the compiled graph takes as declared inputs of that block.

Every step is picklable (it runs in DataLoader workers), knows its configuration as JSON
(`config()`), may own files (tokenizers, processors, statistics: `save_assets(folder)`), and is
rebuilt from the two without the training code (`Step.load(config, folder)`). `tensor_only` steps
are pure torch on tensors, so an export can fold them into the exported graph; the others
(tokenizers, processors) run in Python before it.

A Pipeline is the ordered steps of one direction: `preprocess` (raw observation / sample ->
block inputs) or `postprocess` (graph outputs -> actions in dataset units). It is saved as
`NAME.json` (the steps' kinds and configs) plus `NAME/<index>-<kind>/` asset folders."""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

STEP_KINDS: dict[str, type] = {}
# modules whose import registers the step kinds a saved pipeline may name (normalization and the
# blocks' steps), so loading one imports no block
STEP_MODULES = ["graphvla.processors.normalize", "graphvla.processors.text", "graphvla.processors.fast",
                "graphvla.processors.hf_vlm", "graphvla.processors.action_bounds", "graphvla.processors.smolvla",
                "graphvla.processors.paligemma"]
FORMAT = "graphvla-pipeline"
VERSION = 1


def register_step(cls):
    """Class decorator: make a step kind loadable by name."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} has no kind")
    STEP_KINDS[cls.kind] = cls
    return cls


class StepError(ValueError):
    """A step that failed on a sample: names the block (or 'normalize'), the port and the sample."""


def step_error(step, port, sample, why) -> StepError:
    """StepError 'BLOCK (kind): port P, sample I: why' (block 'normalize' for the graph's own steps)."""
    who = step.block or step.kind
    where = ", ".join(x for x in (f"port {port}" if port else "", f"sample {sample}" if sample is not None else "") if x)
    return StepError(f"{who} ({step.kind} step): {where}: {why}" if where else f"{who} ({step.kind} step): {why}")


def batch_rows(batch: dict) -> int | None:
    """The batch size: the leading size of its tensors / lengths of its lists (None if it has none)."""
    for v in batch.values():
        if hasattr(v, "shape") and len(getattr(v, "shape", ())) > 0:
            return int(v.shape[0])
        if isinstance(v, (list, tuple)):
            return len(v)
    return None


def row_of(batch: dict, i: int, rows: int) -> dict:
    """Sample i of a batch, still batched (size 1): values with `rows` leading entries are cut."""
    out = {}
    for k, v in batch.items():
        if hasattr(v, "shape") and len(getattr(v, "shape", ())) > 0 and v.shape[0] == rows:
            out[k] = v[i:i + 1]
        elif isinstance(v, (list, tuple)) and len(v) == rows:
            out[k] = v[i:i + 1]
        else:
            out[k] = v
    return out


def locate_failure(step, batch: dict, error: Exception) -> StepError:
    """The StepError for a step that raised on a batch: run it sample by sample to name the first
    sample it fails on (the whole batch when each sample alone passes)."""
    ports = ", ".join(p for p in step.reads if p in batch) or ", ".join(step.reads)
    why = f"{type(error).__name__}: {error}"
    rows = batch_rows({k: batch[k] for k in step.reads if k in batch}) or batch_rows(batch)
    if rows and rows > 1:
        for i in range(rows):
            try:
                step(row_of(batch, i, rows))
            except Exception:  # noqa: BLE001 - any failure of this sample alone names it
                return step_error(step, ports, i, why)
        return step_error(step, ports, f"0-{rows - 1} together (each alone passes)", why)
    return step_error(step, ports, 0 if rows else None, why)


class ProcessorStep:
    kind: ClassVar[str] = ""
    tensor_only: ClassVar[bool] = False

    # set by subclasses' constructors
    block: str = ""  # the block that declared it ('' for the graph's own steps: normalization)
    reads: tuple = ()  # batch keys it takes
    writes: tuple = ()  # batch keys it makes (or replaces)

    def __call__(self, batch: dict) -> dict:
        """A new batch: `batch` with this step's `writes` set. Never mutates `batch`."""
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-able description; with the asset folder it rebuilds the step (`load`)."""
        raise NotImplementedError

    def save_assets(self, folder: Path) -> None:
        """Write the files the step needs (tokenizer, processor, statistics); default: none."""

    @classmethod
    def load(cls, config: dict, folder: Path) -> "ProcessorStep":
        raise NotImplementedError

    def describe(self) -> str:
        """One line for `graphvla compile`: what it reads and writes."""
        who = f"{self.block}: " if self.block else ""
        return f"{who}{self.kind}  {', '.join(self.reads)} -> {', '.join(self.writes)}"


class Pipeline:
    """Steps in order; calling it runs each on the batch the previous one returned."""

    def __init__(self, name: str, steps: list):
        self.name, self.steps = name, list(steps)

    def __call__(self, batch: dict) -> dict:
        for step in self.steps:
            try:
                batch = step(batch)
            except StepError:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised naming the block, the port and the sample
                raise locate_failure(step, batch, e) from e
        return batch

    def with_statistics(self, stats: dict | None, modes: dict | None = None) -> "Pipeline":
        """The pipeline with its statistics steps (normalization) bound to `stats` (port ->
        {'mean', 'std', ...}) and `modes` (port -> mode; default: the spec's); with stats None they
        are left out (a graph without normalization). Other steps are shared, not copied."""
        steps = []
        for step in self.steps:
            bind = getattr(step, "with_statistics", None)
            step = step if bind is None else bind(stats, modes)
            if step is not None:
                steps.append(step)
        return Pipeline(self.name, steps)

    def split_for_export(self) -> tuple["Pipeline", "Pipeline"]:
        """(the steps that run in Python before an exported graph, the `tensor_only` steps it can
        fold in): running the first, then the second, equals running this pipeline. A tensor step
        is folded only when it commutes with every step after it that stays in Python (neither
        reads or writes what the other writes), so a prompt made from the normalized state keeps
        the normalization in Python, while a tokenizer of the instruction lets it fold."""
        def commute(x, y):
            wx, wy = set(x.writes), set(y.writes)
            return not (wx & (set(y.reads) | wy) or wy & set(x.reads))

        folded = {i for i, step in enumerate(self.steps) if step.tensor_only}
        changed = True
        while changed:  # moving a step to Python only adds constraints: this ends
            changed = False
            for i in sorted(folded):
                if any(j > i and j not in folded and not commute(self.steps[i], self.steps[j])
                       for j in range(len(self.steps))):
                    folded.discard(i)
                    changed = True
        return (Pipeline(self.name, [s for i, s in enumerate(self.steps) if i not in folded]),
                Pipeline(self.name, [s for i, s in enumerate(self.steps) if i in folded]))

    def find(self, cls):
        """The first step that is an instance of `cls`, or None."""
        return next((s for s in self.steps if isinstance(s, cls)), None)

    def __eq__(self, other):
        return isinstance(other, Pipeline) and self.name == other.name and self.steps == other.steps

    __hash__ = None

    def __len__(self):
        return len(self.steps)

    def __iter__(self):
        return iter(self.steps)

    def describe(self) -> list[str]:
        return [f"{i}. {s.describe()}" for i, s in enumerate(self.steps)]

    def save(self, folder) -> Path:
        """NAME.json plus NAME/<i>-<kind>/ asset folders under `folder`."""
        folder = Path(folder)
        entries = []
        for i, step in enumerate(self.steps):
            assets = folder / self.name / f"{i}-{step.kind}"
            assets.mkdir(parents=True, exist_ok=True)
            step.save_assets(assets)
            if not any(assets.iterdir()):
                assets.rmdir()
            entries.append({"kind": step.kind, "block": step.block, "reads": list(step.reads),
                            "writes": list(step.writes), "config": step.config()})
        if (folder / self.name).is_dir() and not any((folder / self.name).iterdir()):
            (folder / self.name).rmdir()
        path = folder / f"{self.name}.json"
        path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "steps": entries}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder, name: str) -> "Pipeline":
        """Rebuild a saved pipeline; an unknown step kind or format is named with the file."""
        import_step_modules()
        folder = Path(folder)
        path = folder / f"{name}.json"
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file (format {data.get('format')!r}, "
                             f"version {data.get('version')!r})")
        steps = []
        for i, entry in enumerate(data["steps"]):
            kind = entry.get("kind")
            if kind not in STEP_KINDS:
                raise ValueError(f"{path}: steps[{i}].kind '{kind}' is not a known processor step "
                                 f"({', '.join(sorted(STEP_KINDS)) or 'none registered'})")
            steps.append(STEP_KINDS[kind].load(entry["config"], folder / name / f"{i}-{kind}"))
        return cls(name, steps)


def import_step_modules() -> None:
    import importlib

    for module in STEP_MODULES:
        importlib.import_module(module)
