"""bench/mlp_baseline.py, the no-camera MLP baseline, on a published protocol (here
lerobot-metaworld, on a tiny recording): it runs exactly the protocol's episodes with the
protocol's instructions, per episode the same as `graphvla eval --protocol` gives for the same
policy, counts the evaluation episodes that start from a recorded scene, pairs its episodes with a
`graphvla eval --protocol` results.json in an exact McNemar test, and refuses by name a recording
or a result of another protocol, an unknown protocol and a recording without the protocol's
instructions."""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, require_metaworld

TASKS = ["reach-v3", "dial-turn-v3"]
NAME = "lerobot-metaworld"
STEPS, BATCH = 30, 16


@pytest.fixture(scope="module")
def baseline():
    spec = importlib.util.spec_from_file_location("mlp_baseline", REPO / "bench" / "mlp_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def protocol():
    require_metaworld()
    from graphvla.sim import lerobot_metaworld as P

    return P


@pytest.fixture(scope="module")
def eval_vectors(protocol):
    """task -> the scene vectors of the protocol's first two episodes, built directly."""
    out = {}
    for task in TASKS:
        env = protocol.make_env(task, 8)
        try:
            out[task] = []
            for ep in range(2):
                protocol.start_episode(env, ep)
                out[task].append([float(x) for x in env._last_rand_vec])
        finally:
            env.close()
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory, protocol, eval_vectors):
    """A lerobot-metaworld recording (2 tasks x 2 episodes, 32 px) whose first reach-v3
    demonstration is marked as starting from evaluation episode 0's scene, so that the baseline's
    count of evaluation episodes from training scenes has one to find."""
    from graphvla.data.protocol_record import record_protocol

    root = tmp_path_factory.mktemp("lmw") / "data"
    record_protocol(root, TASKS, episodes=2, size=32, workers=1, progress=False, log=lambda m: None, protocol=NAME)
    path = root / "meta" / "episodes.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first = next(r for r in rows if r["env_task"] == "reach-v3")
    first["scene"] = eval_vectors["reach-v3"][0]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _run(baseline, monkeypatch, capsys, *args):
    """bench/mlp_baseline.py ARGS in this process: (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["mlp_baseline.py", *map(str, args)])
    code, message = 0, ""
    try:
        baseline.main()
    except SystemExit as e:  # argparse exits 2 having printed; SystemExit(message) exits 1
        code, message = (e.code, "") if isinstance(e.code, int) else (1, str(e.code))
    out = capsys.readouterr()
    return code, out.out + out.err + message


@pytest.fixture(scope="module")
def ours(tmp_path_factory, baseline, recording):
    """The baseline trained STEPS steps of BATCH on the recording and evaluated on the protocol's
    first two episodes of TASKS: (results.json, printed output)."""
    out = tmp_path_factory.mktemp("mlp") / "out"
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(sys, "argv", ["mlp_baseline.py", str(recording), "--protocol", NAME, "--tasks", ",".join(TASKS),
                                 "--episodes", "2", "--steps", str(STEPS), "--batch", str(BATCH), "-o", str(out)])
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            baseline.main()
    finally:
        mp.undo()
    return json.loads((out / "results.json").read_text()), buf.getvalue()


def test_baseline_runs_the_protocols_episodes_with_its_labels(ours, protocol, eval_vectors):
    summary, printed = ours
    P = protocol
    assert summary["protocol"] == NAME and summary["config"]["protocol"] == NAME
    cfg = summary["config"]
    assert (cfg["max_steps"], cfg["seed"], cfg["camera"], cfg["tasks"]) == (500, 1000, "corner2", P.select([], TASKS))
    assert cfg["tasks"] == ["dial-turn-v3", "reach-v3"]  # LeRobot's order of the easy bucket
    assert cfg["baseline"] == "MLP baseline (state + task, no camera)" and cfg["graph"] == "mlp-baseline"
    assert summary["training"]["steps"] == STEPS and summary["training"]["batch"] == BATCH
    for task in TASKS:
        rows = summary["episodes"][task]
        assert [r["scene"] for r in rows] == [1000, 1001]  # lerobot_eval's seeds, not starvla-mt50's scenes
        assert all(np.allclose(r["scene_vector"], v) for r, v in zip(rows, eval_vectors[task]))
        assert all(1 <= r["steps"] <= P.MAX_STEPS and r["queries"] >= 1 for r in rows)
        assert summary["tasks"][task]["bucket"] == "easy"
    assert summary["episodes_from_training_scenes"] == 1  # the demonstration marked with episode 0's scene
    assert set(summary["buckets"]) == {"easy"} and summary["buckets"]["easy"]["of"] == 28
    assert "MLP baseline (state + task, no camera)" in printed and "SmolVLA 0.45B" in printed
    assert "Evo-1 0.77B" in printed and "easy (2/28)" in printed
    assert "episodes starting from a scene in the training data: 1 of 4" in printed


def test_baseline_episodes_equal_graphvla_eval_of_the_same_policy_and_mcnemar_pairs_them(
        tmp_path, monkeypatch, capsys, baseline, recording, ours):
    """The same MLP (same data, seed and steps) served and run by `graphvla eval --protocol
    --server` gives the baseline's per-episode results; --compare against that results.json
    pairs every episode, and the McNemar counts follow the flags."""
    from graphvla.cli import main
    from graphvla.runners.eval.stats import mcnemar_exact
    from graphvla.runners.serve import ServeOptions, ServerThread

    summary, _ = ours
    names = baseline.load_tasks(recording)
    net, mean, std, _ = baseline.train(*baseline.load_chunks(recording), len(names), STEPS, BATCH)
    policy = baseline.MLPPolicy(net, mean, std, names, 4)
    other_dir = tmp_path / "graphvla-eval"
    with ServerThread(policy, ServeOptions(port=0, max_batch=1, execute_steps=summary["config"]["execute_steps"])) as srv:
        result = CliRunner().invoke(main, ["eval", "--protocol", NAME, "--server", srv.url, "--tasks", ",".join(TASKS),
                                           "--episodes", "2", "--data", str(recording), "-o", str(other_dir),
                                           "--no-gif"])
    assert result.exit_code == 0, result.output
    other = json.loads((other_dir / "results.json").read_text())
    assert other["episodes"] == summary["episodes"]  # scene, success, steps, queries of every episode
    assert other["episodes_from_training_scenes"] == summary["episodes_from_training_scenes"] == 1

    ours_file = tmp_path / "ours.json"
    ours_file.write_text(json.dumps(summary))
    code, out = _run(baseline, monkeypatch, capsys, "--from-results", ours_file, "--compare",
                     other_dir / "results.json")
    assert code == 0, out
    assert "compared on the 4 episodes both ran (2 tasks)" in out
    assert "paired, exact McNemar over the same 4 episodes: MLP alone succeeded in 0, mlp-baseline alone in 0: " \
           "p = 1.0000, not significant at 95%" in out

    # flip the compared run's flags: McNemar counts the discordant pairs per task and in all
    flipped = copy.deepcopy(other)
    flags = [True, True, False, True]
    pairs = [(t, i) for t in TASKS for i in range(2)]
    for (task, i), flag in zip(pairs, flags):
        flipped["episodes"][task][i]["success"] = flag
    mine = [summary["episodes"][t][i]["success"] for t, i in pairs]
    b = sum(m and not f for m, f in zip(mine, flags))
    c = sum(f and not m for m, f in zip(mine, flags))
    flipped_file = tmp_path / "flipped.json"
    flipped_file.write_text(json.dumps(flipped))
    code, out = _run(baseline, monkeypatch, capsys, "--from-results", ours_file, "--compare", flipped_file)
    assert code == 0, out
    p = mcnemar_exact(b, c)
    assert f"MLP alone succeeded in {b}, mlp-baseline alone in {c}: p = {baseline.p_text(p)}" in out
    reach = out.split("compared on")[1].split("reach-v3")[1].splitlines()[0]  # the comparison's row
    assert reach.split()[0] == "easy" and reach.split()[-1] == f"{mcnemar_exact(*_bc(summary, flipped, 'reach-v3')):.3f}"

    # a compared episode that started from another scene is not a pair: no McNemar
    moved = copy.deepcopy(other)
    moved["episodes"]["dial-turn-v3"][1]["scene"] = 7
    moved_file = tmp_path / "moved.json"
    moved_file.write_text(json.dumps(moved))
    code, out = _run(baseline, monkeypatch, capsys, "--from-results", ours_file, "--compare", moved_file)
    assert code == 0 and "McNemar: not applicable, 1 paired episodes start from different scenes" in out


def _bc(a, b, task):
    x = [r["success"] for r in a["episodes"][task]]
    y = [r["success"] for r in b["episodes"][task]]
    return sum(p and not q for p, q in zip(x, y)), sum(q and not p for p, q in zip(x, y))


def test_another_protocols_recording_or_result_is_refused_naming_both(tmp_path, monkeypatch, capsys, baseline,
                                                                       recording, ours):
    other = tmp_path / "starvla-data"
    (other / "meta").mkdir(parents=True)
    (other / "meta" / "info.json").write_text(json.dumps({"graphvla": {"protocol": "starvla-mt50"}}))
    code, out = _run(baseline, monkeypatch, capsys, other, "--protocol", NAME, "--tasks", "reach-v3",
                     "--steps", 2, "--batch", 4, "-o", tmp_path / "a")
    assert code != 0 and "recorded for protocol 'starvla-mt50'" in out and f"protocol '{NAME}'" in out
    assert not (tmp_path / "a").exists()
    code, out = _run(baseline, monkeypatch, capsys, recording, "--protocol", "starvla-mt50", "--tasks", "reach-v3",
                     "--steps", 2, "--batch", 4, "-o", tmp_path / "b")
    assert code != 0 and f"recorded for protocol '{NAME}'" in out and "protocol 'starvla-mt50'" in out
    assert not (tmp_path / "b").exists()

    # a starvla-mt50 result to compare with: refused before training, naming both protocols
    result = tmp_path / "starvla.json"
    result.write_text(json.dumps({"protocol": "starvla-mt50", "episodes": {}}))
    code, out = _run(baseline, monkeypatch, capsys, recording, "--protocol", NAME, "--compare", result,
                     "-o", tmp_path / "c")
    assert code == 2 and "a --protocol starvla-mt50 result, not lerobot-metaworld" in out
    assert "training" not in out and not (tmp_path / "c").exists()
    ours_file = tmp_path / "ours.json"
    ours_file.write_text(json.dumps(ours[0]))
    code, out = _run(baseline, monkeypatch, capsys, "--from-results", ours_file, "--protocol", "starvla-mt50")
    assert code != 0 and "a --protocol lerobot-metaworld result, not a --protocol starvla-mt50 one" in out

    # an unknown protocol lists the protocols `graphvla eval --protocol` takes
    code, out = _run(baseline, monkeypatch, capsys, recording, "--protocol", "lerobot")
    assert code == 2 and "starvla-mt50" in out and "lerobot-metaworld" in out


def test_a_recording_without_the_protocols_instructions_is_refused(tmp_path, monkeypatch, capsys, baseline,
                                                                   recording):
    """The instruction of a lerobot-metaworld task is LeRobot's description; a recording labelled
    with GraphVLA's own instructions has no demonstrations the protocol's client can name."""
    from graphvla.sim import metaworld as mw

    relabelled = tmp_path / "data"
    shutil.copytree(recording, relabelled)
    (relabelled / "meta" / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": mw.instruction(t)}) + "\n" for i, t in enumerate(TASKS)))
    code, out = _run(baseline, monkeypatch, capsys, relabelled, "--protocol", NAME, "--tasks", "reach-v3",
                     "--steps", 2, "--batch", 4, "-o", tmp_path / "out")
    assert code != 0 and "no demonstrations of reach-v3" in out and "lerobot-metaworld instructions" in out
    assert not (tmp_path / "out").exists()
    code, out = _run(baseline, monkeypatch, capsys, recording, "--protocol", NAME, "--tasks", "reach-v3,push-v3",
                     "--steps", 2, "--batch", 4, "-o", tmp_path / "out")
    assert code != 0 and "no demonstrations of push-v3" in out and "reach-v3" not in out.split("no demonstrations")[1]
