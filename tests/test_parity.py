"""`graphvla check RUN --parity`: the same frames through the training collate (the trainer's own
feed: normalization and the blocks' processor steps), `Policy.infer_batch` and an export give the
same block inputs and actions. Every packaged graph family (tiny/*, metaworld/*) is trained one
step on a small Meta-World recording and passes; a run whose saved statistics were changed, and an
export of another run, fail with exit code 1 naming the port and the frame."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from graphvla.cli import main
from graphvla.spec.library import packaged_graphs

GRAPHS = [n for n in packaged_graphs() if n.split("/")[0] in ("tiny", "metaworld")]
EXPORTED = ("tiny/mlp", "tiny/flowdit", "metaworld/mt10")  # small encoders; flow head + Qwen3-VL (noise); keypoints
ONE_STEP = ["--set", "trainer.max_steps=1", "--set", "trainer.batch_size=2", "--set", "trainer.num_workers=0",
            "--set", "trainer.warmup_steps=1"]
# per graph: what makes it train on the recording (tiny/mlp declares an 8-d state; the recording's is 4-d)
SETS = {"tiny/mlp": ["--set", "inputs.state.dim=4"]}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def privileged_data(metaworld_data, tmp_path_factory):
    """The recording with the state port reading the simulator's state (the *-privileged graphs)."""
    path = tmp_path_factory.mktemp("privileged") / "data.yaml"
    path.write_text(f"datasets:\n  - {{path: {metaworld_data}, keys: {{state: observation.environment_state}}}}\n")
    return path


def train(name, data, run, *sets):
    result = invoke("train", name, "--data", data, "-o", run, "--no-progress", *ONE_STEP, *SETS.get(name, []), *sets)
    assert result.exit_code == 0, result.output
    return run


def port_lines(output: str) -> dict:
    """{port: max |diff|} from the report's table."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^  (\S+) +(\S+)$", output, re.M)}


def test_the_graph_families_are_all_here():
    assert {"tiny/mlp", "tiny/querytf", "tiny/flowdit", "tiny/dualsystem", "tiny/fast", "tiny/fast-lm", "tiny/worldmodel-flowdit",
            "metaworld/mt10", "metaworld/mt50", "metaworld/mt10-small-privileged"} <= set(GRAPHS)


@pytest.mark.slow
@pytest.mark.parametrize("name", GRAPHS)
def test_training_policy_and_export_agree(name, metaworld_data, privileged_data, tmp_path):
    data = privileged_data if "privileged" in name else metaworld_data
    run = train(name, data, tmp_path / "run")
    args = ["check", run, "--parity", "--frames", 3]
    if name in EXPORTED:
        result = invoke("export", run, "-o", tmp_path / "exported")
        assert result.exit_code == 0, result.output
        args += ["--export", tmp_path / "exported"]
    result = invoke(*args)  # the frames come from the data the run notes it trained on (RUN/data.json)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"3 frames of stream 'action'" in out and out.strip().endswith("ok")
    ports = port_lines(out)
    if name == "tiny/fast-lm":  # its head decodes the VLM's generated tokens, which only inference makes
        assert "(not compared: head (fast.decode) run only at inference)" in out
        assert "vlm.input_ids" in ports  # the prompt with the state written in, made by two steps
    else:
        assert [p for p in ports if p.split(".")[0] == "head"], out  # the action head's inputs were compared
    assert all(d <= 1e-5 for d in ports.values()), out
    if name in EXPORTED:
        assert "actions, Policy vs export" in out and "actions" in ports


@pytest.fixture(scope="module")
def mlp_run(metaworld_data, tmp_path_factory):
    return train("tiny/mlp", metaworld_data, tmp_path_factory.mktemp("parity") / "run")


def test_changed_statistics_are_named_with_the_port_and_frame(mlp_run, metaworld_data, tmp_path):
    """The checkpoint's saved state statistics no longer are the data's: the Policy normalizes the
    state differently from the training collate, and the first block that takes it is named."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    ckpt = next((run / "checkpoints").glob("step_*"))
    changed = 0
    for path in [ckpt / "normalization.json", *ckpt.glob("preprocess/*normalize*/*.json")]:
        text = path.read_text()
        data = json.loads(text)
        stats = data.get("stats", data)
        if "state" in stats:
            stats["state"]["mean"] = [v + 0.5 for v in stats["state"]["mean"]]
            path.write_text(json.dumps(data))
            changed += 1
    assert changed
    result = invoke("check", run, "--parity", "--data", metaworld_data, "--frames", 2)
    assert result.exit_code == 1, result.output
    assert "mismatch: block input 'head.state' differs at frame 0: max |training collate - Policy| = " in result.output
    assert port_lines(result.output)["head.state"] > 0.1
    assert result.output.strip().endswith("mismatch(es)")


def test_an_export_of_another_run_is_named_with_the_output_and_frame(mlp_run, metaworld_data, tmp_path):
    other = train("tiny/mlp", metaworld_data, tmp_path / "other", "--set", "trainer.seed=1")
    result = invoke("export", other, "-o", tmp_path / "exported")
    assert result.exit_code == 0, result.output
    result = invoke("check", mlp_run, "--parity", "--export", tmp_path / "exported", "--frames", 2)
    assert result.exit_code == 1, result.output
    assert re.search(r"mismatch: output 'actions' differs at frame [01]: max \|Policy - export\| = \S+ > 1e-05",
                     result.output), result.output
    assert "mismatch: block input" not in result.output  # training and the policy still agree


def test_a_run_without_recorded_data_needs_data(mlp_run, metaworld_data, tmp_path):
    import shutil

    ckpt = next((mlp_run / "checkpoints").glob("step_*"))
    result = invoke("check", ckpt, "--parity", "--frames", 1)  # a checkpoint inside its run: the run's data.json
    assert result.exit_code == 0, result.output
    alone = tmp_path / "ckpt"
    shutil.copytree(ckpt, alone)
    result = invoke("check", alone, "--parity")
    assert result.exit_code == 1 and "no data.json says what it was trained on; pass --data DATA" in result.output
    result = invoke("check", "tiny/mlp", "--data", metaworld_data)
    assert result.exit_code == 1 and "--data and --export go with --parity" in result.output


@pytest.mark.slow
def test_a_co_training_graph_is_checked_on_its_action_stream(metaworld_data, tmp_path):
    """Two streams (actions, and image-text answers for the VLM): the trainer sets up both, the
    check draws its frames from the stream that trains the action head."""
    from test_demo_vqa import robot_yaml

    from graphvla.data.demo_vqa import write_demo_vqa
    from graphvla.spec.library import graphs_root

    write_demo_vqa(robot_yaml(tmp_path, metaworld_data), tmp_path / "vqa", every=10)
    graph = graphs_root() / "sweeps" / "backbones" / "qwen3vl-querytf-cotrain.yaml"
    run = train(graph, tmp_path / "vqa" / "data.yaml", tmp_path / "run")
    result = invoke("check", run, "--parity", "--frames", 2)
    assert result.exit_code == 0, result.output
    assert "2 frames of stream 'action'" in result.output and result.output.strip().endswith("ok")
    assert {"vlm.input_ids", "vlm.pixel_values", "head.context", "head.state"} <= set(port_lines(result.output))
