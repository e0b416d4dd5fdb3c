"""Shared fixtures: the tiny example spec, packaged graphs with overrides as spec text
(graph_text), helpers to write specs and catch spec errors, and the Meta-World gate (require_metaworld) with one small recording for every module."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_SPEC = REPO / "graphvla" / "graphs" / "tiny" / "mlp.yaml"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test models are tiny: a second intra-op thread only adds contention on a 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def graph_text(graph: str = "tiny/mlp", *overrides: str) -> str:
    """The YAML text of a packaged graph with `--set` overrides applied, for a test that needs a
    spec file: a test's graph then shows only how it differs from a packaged one. Not validated,
    so a test may set a bad value on purpose and find the error located in the file it writes."""
    from graphvla.spec.loader import load_spec

    return load_spec(graph, list(overrides), validate=False).to_yaml()


def flow_yaml(data: dict) -> str:
    """YAML text of spec data as the packaged graphs write it: every map that holds no map (a port,
    a block's `in` and `with`, a loss) on one line in flow style, the rest in block style."""
    import yaml

    class Flow(dict):
        pass

    def mark(value, top=False):
        if isinstance(value, dict):
            marked = {k: mark(v) for k, v in value.items()}
            return marked if top or any(isinstance(v, dict) for v in value.values()) else Flow(marked)
        return [mark(v) for v in value] if isinstance(value, list) else value

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True))
    Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    return yaml.dump(mark(data, top=True), Dumper=Dumper, sort_keys=False)


def line_of(text: str, snippet: str) -> int:
    """The 1-based number of the first line of `text` that holds `snippet` (where a test expects a
    located error)."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if snippet in line)


def state_graph(dim: int, blocks: dict, outputs: dict, losses: dict | None = None) -> str:
    """The YAML text of a graph of one state input and `blocks`: for block types only a test
    registers, which no packaged graph holds. The one definition of such a graph."""
    import yaml

    data = {"graphvla": 1, "name": "state-only", "inputs": {"state": {"kind": "state", "dim": dim}},
            "blocks": blocks, "outputs": outputs}
    if losses:
        data["losses"] = losses
    return yaml.safe_dump(data, sort_keys=False)


def vqa_cotraining(size: int, weight: float) -> list[str]:
    """--set overrides that add a co-training stream to a packaged VLM graph (tiny/querytf): image,
    question and answer ports, a node that `share:`s the VLM on them, and its LM loss as the
    stream 'vlm' (a weight of `weight`)."""
    return [f"inputs.vqa_images={{kind: image, views: 1, size: [{size}, {size}]}}", "inputs.vqa_question={kind: text}",
            "inputs.vqa_answer={kind: text, train_only: true}",
            "blocks.vlm_cotrain={share: vlm, in: {images: inputs.vqa_images, text: inputs.vqa_question, "
            "target_text: inputs.vqa_answer}}",
            f"losses.vlm={{from: vlm_cotrain.lm_loss, weight: {weight}, stream: vlm}}"]


@pytest.fixture
def tiny_text() -> str:
    """The YAML text of graphvla/graphs/tiny/mlp.yaml (small encoders + MLP head)."""
    return TINY_SPEC.read_text()


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(name, text) -> path of a spec file written under tmp_path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write


def spec_issues(fn, *args, **kwargs):
    """Call fn, expect graphvla.SpecError, return its issues."""
    from graphvla import SpecError

    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    return info.value.issues


_RENDER_PROBLEMS: dict = {}  # render_problem function -> its answer (making an env takes seconds)


def missing(problem: str, remedy: str) -> None:
    """Skip the calling test or fixture because something it needs is missing here, or, under
    CI=true, fail it: a CI run must not pass with tests skipped hollow. Every skip goes through here."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {problem}; {remedy} rather than skip", pytrace=False)
    pytest.skip(problem)


def require_module(name: str, remedy: str):
    """The module `name` (a declared test dependency), or a skip (a failure under CI=true)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing(f"{name} is not installed ({e})", remedy)


def require_program(name: str, remedy: str) -> str:
    """The path of the program `name`, or a skip (a failure under CI=true)."""
    import shutil

    path = shutil.which(name)
    if path is None:
        missing(f"'{name}' is not on PATH", remedy)
    return path


def train_protocol_run(base: Path, recording: Path, steps: int):
    """A small metaworld/mt50 policy (32 px, head width 64) trained `steps` steps on a protocol
    recording: (run folder, data YAML, training result)."""
    from graphvla.runners.train import train
    from graphvla.runners.train.dataio import load_bundle
    from graphvla.spec.loader import load_spec

    data_yaml = base / "data.yaml"
    data_yaml.write_text(f"datasets:\n  - path: {recording}\n    keys: {{images: [observation.images.corner2], "
                         "state: observation.state, actions: action, instruction: task}\n")
    overrides = ["inputs.images.size=[32, 32]", f"trainer.max_steps={steps}", "trainer.batch_size=16",
                 f"trainer.save_every={steps}", "trainer.warmup_steps=5", "blocks.head.with.hidden=64"]
    spec = load_spec(REPO / "graphvla" / "graphs" / "metaworld" / "mt50.yaml", overrides)
    result = train(spec, load_bundle(str(data_yaml), spec), base / "run", progress=False)
    return base / "run", data_yaml, result


def require_metaworld() -> None:
    """Return when Meta-World renders here. Otherwise skip the calling test or fixture, or, under
    CI=true, fail it."""
    from graphvla.sim import metaworld as mw

    check = mw.render_problem  # looked up per call, so a test can patch it
    if check not in _RENDER_PROBLEMS:
        _RENDER_PROBLEMS[check] = check()
    problem = _RENDER_PROBLEMS[check]
    if problem is not None:
        missing(problem, "install the GL libraries (MUJOCO_GL=egl)")


@pytest.fixture(scope="session")
def metaworld_data(tmp_path_factory):
    """A small Meta-World recording (1 task x 2 episodes, 64x64) made with graphvla.data."""
    require_metaworld()
    from graphvla.data.metaworld_record import tiny_metaworld

    return tiny_metaworld(tmp_path_factory.mktemp("mw"), tasks=("reach-v3",), episodes=2, size=64)
