"""The privileged-port rule: a graph reads simulator state no robot has (Meta-World's
`observation.environment_state`) only through a state input it declares `privileged: true`.
The spec accepts the flag on state inputs only, the data layer gives that key to no other port,
and the policy metadata says the graph is privileged (its results: a privileged upper bound)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import graph_text, spec_issues

from graphvla.data.api import load_data
from graphvla.data.lerobot import DatasetError
from graphvla.data.lerobot_write import LeRobotWriter
from graphvla.spec.loader import load_spec
from graphvla.spec.schema import PRIVILEGED_DATA_KEYS, privileged_ports, spec_schema

ENV = "observation.environment_state"


def spec_text(state: str = "{kind: state, dim: 4}", image_extra: str = "") -> str:
    """tiny/mlp, smaller, with this state input (and extra fields on the image input)."""
    return graph_text("tiny/mlp", "name=privileged-test", f"inputs.state={state}",
                      f"inputs.images={{kind: image, views: 1, size: [16, 16]{image_extra}}}",
                      "inputs.actions.horizon=2", "blocks.vision.with={width: 16, patch: 8}",
                      "blocks.language.with.width=16", "blocks.fuse.with.width=16", "blocks.head.with.hidden=16")


PRIVILEGED_STATE = "{kind: state, dim: 39, privileged: true, description: the full Meta-World observation}"


@pytest.fixture
def dataset(tmp_path):
    """A LeRobot dataset with both state keys a Meta-World recording has: the robot's 4-d
    observation.state and the simulator's 39-d observation.environment_state."""
    rng = np.random.default_rng(0)
    n = 5
    w = LeRobotWriter(tmp_path / "ds", fps=10, features={
        "observation.images.corner": ("image", (16, 16, 3)), "observation.state": ("float32", (4,)),
        ENV: ("float32", (39,)), "action": ("float32", (4,))})
    cols = {"observation.images.corner": rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=(n, 4)), ENV: rng.normal(size=(n, 39)) + 10.0,
            "action": rng.normal(size=(n, 4))}
    w.add_episode(cols, "reach the goal")
    w.finalize()
    return tmp_path / "ds", cols


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# --- the spec -------------------------------------------------------------------------------------

def test_privileged_is_a_state_field_and_privileged_ports_lists_it(tmp_path):
    field = spec_schema()["properties"]["inputs"]["additionalProperties"]["properties"]["privileged"]
    assert field["type"] == "boolean" and field["default"] is False
    assert "no robot has" in field["description"] and "privileged upper bound" in field["description"]
    assert ENV in PRIVILEGED_DATA_KEYS
    spec = load_spec(write(tmp_path, "p.yaml", spec_text(PRIVILEGED_STATE)))
    assert privileged_ports(spec) == ["state"] and privileged_ports(spec.data) == ["state"]
    plain = load_spec(write(tmp_path, "s.yaml", spec_text()))
    assert privileged_ports(plain) == []
    off = load_spec(write(tmp_path, "f.yaml", spec_text("{kind: state, dim: 4, privileged: false}")))
    assert privileged_ports(off) == []


def test_privileged_on_another_kind_is_a_located_error(tmp_path):
    text = spec_text(image_extra=", privileged: true")
    path = write(tmp_path, "bad.yaml", text)
    [issue] = spec_issues(load_spec, path)
    assert issue.message == "'privileged' does not apply to an image input"
    assert issue.path == ("inputs", "images", "privileged")
    line = text.splitlines().index("    privileged: true") + 1  # the image's own field (the state has none)
    assert (issue.location.file, issue.location.line) == (str(path), line) and issue.location.col > 1
    assert "only a state input may be privileged" in issue.hint
    [issue] = spec_issues(load_spec, write(tmp_path, "bad2.yaml", spec_text("{kind: state, dim: 4, privileged: 1}")))
    assert issue.path == ("inputs", "state", "privileged")


# --- the data -------------------------------------------------------------------------------------

def test_a_graph_without_a_privileged_port_never_receives_the_environment_state(tmp_path, dataset):
    root, cols = dataset
    spec = load_spec(write(tmp_path, "s.yaml", spec_text()))
    item = load_data(root, spec).streams["action"][2]  # default keys: the robot's own state
    np.testing.assert_allclose(item["state"].numpy(), cols["observation.state"][2], rtol=1e-6)
    cfg = write(tmp_path, "data.yaml", f"datasets:\n  - {{path: {root}, keys: {{state: {ENV}}}}}\n")
    wide = load_spec(write(tmp_path, "w.yaml", spec_text("{kind: state, dim: 39}")))
    for s in (spec, wide):
        with pytest.raises(DatasetError) as info:
            load_data(cfg, s)
        assert str(info.value) == (
            f"{cfg}: datasets[0].keys.state: '{ENV}' is the simulator's privileged state; only a port declared "
            "`privileged: true` may read it (name such graphs *-privileged.yaml)")
    # nor through an action port
    cfg.write_text(f"datasets:\n  - {{path: {root}, keys: {{actions: {ENV}}}}}\n")
    with pytest.raises(DatasetError, match=r"keys.actions: 'observation.environment_state' is the simulator's privileged"):
        load_data(cfg, spec)


def test_a_privileged_port_reads_the_environment_state(tmp_path, dataset):
    root, cols = dataset
    spec = load_spec(write(tmp_path, "p.yaml", spec_text(PRIVILEGED_STATE)))
    cfg = write(tmp_path, "data.yaml", f"datasets:\n  - {{path: {root}, keys: {{state: {ENV}}}}}\n")
    ds = load_data(cfg, spec).streams["action"]
    np.testing.assert_allclose(ds[3]["state"].numpy(), cols[ENV][3], rtol=1e-6)
    # a privileged port may still read the robot's own state
    small = load_spec(write(tmp_path, "p4.yaml", spec_text("{kind: state, dim: 4, privileged: true}")))
    np.testing.assert_allclose(load_data(root, small).streams["action"][1]["state"].numpy(),
                               cols["observation.state"][1], rtol=1e-6)


# --- the policy -----------------------------------------------------------------------------------

def test_policy_metadata_says_privileged(tmp_path):
    from graphvla.compiler.compile import compile_graph
    from graphvla.policy.policy import Policy

    for text, privileged in ((spec_text(PRIVILEGED_STATE), True), (spec_text(), False)):
        meta = Policy.from_compiled(compile_graph(load_spec(write(tmp_path, "g.yaml", text)), device="cpu")).metadata
        assert meta["privileged"] is privileged
        assert meta["inputs"]["state"].get("privileged", False) is privileged
        assert "privileged" not in meta["inputs"]["images"]
