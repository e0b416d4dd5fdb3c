"""The lerobot-metaworld protocol: its scenes equal a direct construction the way LeRobot's
MetaworldEnv builds and seeds its env, recording never starts from an evaluation scene and sees the
evaluation's pixels, workers do not change per-episode results, the published rows are data, and
bad input (an unknown protocol, a recording made for another protocol) is refused by name."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, require_metaworld, train_protocol_run

TASKS = ["reach-v3", "dial-turn-v3"]
NAME = "lerobot-metaworld"


@pytest.fixture(scope="module")
def protocol():
    require_metaworld()
    from graphvla.sim import lerobot_metaworld as P

    return P


def test_anchors_hold_the_buckets_descriptions_and_published_rows():
    from graphvla.sim import lerobot_metaworld as P

    assert [len(P.bucket_tasks()[b]) for b in P.BUCKETS] == [28, 11, 6, 5]
    assert len(set(P.tasks())) == 50
    assert P.tasks()[0] == "button-press-v3" and P.bucket_of("stick-pull-v3") == "very_hard"
    assert set(P.anchors()["task_descriptions"]) == set(P.tasks())
    assert P.instruction("reach-v3") == "Reach a goal position"
    rows = P.peer_rates()
    # the averages the papers print (SmolVLA table; Evo-1); their per-bucket figures are not held
    # (not read from the papers: null, never filled from memory)
    assert {k: r["overall"] for k, r in rows.items()} == pytest.approx(
        {"diffusion_policy": 0.105, "tinyvla": 0.316, "pi0": 0.479, "smolvla_0.45b": 0.573,
         "smolvla_2.25b": 0.682, "evo1_0.77b": 0.806})
    assert all(r[b] is None for r in rows.values() for b in P.BUCKETS)
    assert all(v is None for v in P.peer_rates("reach-v3").values())  # published per bucket only
    assert P.select(buckets=["hard"]) == P.bucket_tasks()["hard"]
    with pytest.raises(ValueError, match="did you mean 'reach-v3'"):
        P.select(names=["reach-v2"])
    meta = P.anchors()["metadata"]
    assert "7427f31801f944f5ec9ce53cda02862ce7d1638b" in meta["source"]["environment"]
    assert meta["differences_in_graphvla"]  # what cannot be reproduced is said, not hidden


def test_every_task_exists_in_the_installed_metaworld(protocol):
    import metaworld

    assert set(protocol.tasks()) == set(metaworld.ALL_V3_ENVIRONMENTS)


def _lerobot_env(task):
    """LeRobot's MetaworldEnv._ensure_env, written out with Meta-World's API (no GraphVLA code)."""
    import metaworld

    mt1 = metaworld.MT1(task, seed=42)
    env = mt1.train_classes[task](render_mode="rgb_array", camera_name="corner2")
    env.set_task(mt1.train_tasks[0])
    env.model.cam_pos[2] = [0.75, 0.075, 0.7]
    env.reset()
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    return env


def test_first_scenes_equal_lerobots_construction_and_seeding(protocol):
    P = protocol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for task in ("button-press-topdown-v3", "reach-v3", "assembly-v3", "stick-push-v3"):
            theirs = _lerobot_env(task)
            expected = []
            for ep in range(3):  # MetaworldEnv.reset(seed): env.seed(seed); env.reset(seed=seed)
                theirs.seed(1000 + ep)
                obs, _ = theirs.reset(seed=1000 + ep)
                expected.append((obs, np.array(theirs._last_rand_vec)))
            cam = np.array(theirs.model.cam_pos[2])
            theirs.close()
            ours = P.make_env(task, 16)
            try:
                assert np.array_equal(ours.model.cam_pos[2], cam)
                for ep, (obs, vec) in enumerate(expected):
                    got, _ = P.start_episode(ours, ep)
                    assert np.array_equal(got, obs) and np.array_equal(ours._last_rand_vec, vec), (task, ep)
                    assert P.scene_of(ours) == 1000 + ep
                assert not np.array_equal(expected[0][1], expected[1][1])  # each seed its own scene
                # a scene depends on its seed only, not on what the env did before
                for _ in range(5):
                    ours.step(np.ones(4, dtype=np.float32))
                again, _ = P.start_episode(ours, 1)
                assert np.array_equal(again, expected[1][0])
            finally:
                ours.close()
    assert P.eval_scenes("reach-v3", 3) == (1000, 1001, 1002)


def test_frame_is_the_flipped_corner2_render_at_the_graph_size(protocol):
    P = protocol
    env = P.make_env("reach-v3", 24)
    try:
        P.start_episode(env, 0)
        frame = P.frame(env, 24)
        raw = env.render()
        assert raw.shape == (24, 24, 3) and np.array_equal(frame, raw[::-1, ::-1])
        with pytest.raises(ValueError, match="make_env"):
            P.frame(env, 32)
    finally:
        env.close()
    assert np.array_equal(P.clip_action(None, [2.0, -3.0, 0.5, 1.0]), np.float32([2.0, -3.0, 0.5, 1.0]))  # unclipped


def test_recording_seeds_avoid_every_evaluation_seed(protocol):
    P = protocol
    seeds = P.recording_scenes("reach-v3", 1500)
    assert len(seeds) == len(set(seeds)) == 1500 and seeds[:3] == [0, 1, 2]
    assert not set(seeds) & set(range(P.SEED, P.SEED + P.RESERVED))
    assert not set(seeds) & set(P.eval_scenes("reach-v3", 1000))


def test_validation_seeds_follow_the_recorded_ones_and_avoid_evaluation(protocol):
    from graphvla.data.protocol_record import validation_scenes

    P = protocol
    recorded = set(range(35))  # a 35-demonstration recording whose expert never failed
    assert validation_scenes(NAME, "reach-v3", recorded, 7) == list(range(35, 42))
    many = validation_scenes(NAME, "reach-v3", set(range(990)), 30)
    assert many == list(range(990, 1000)) + list(range(2000, 2020))  # skips every reserved evaluation seed
    assert not set(many) & set(range(P.SEED, P.SEED + P.RESERVED))


@pytest.fixture(scope="module")
def lerobot_data(tmp_path_factory, protocol):
    from graphvla.data.protocol_record import record_protocol

    root = tmp_path_factory.mktemp("lerobot") / "data"
    record_protocol(root, TASKS, episodes=2, size=32, workers=1, progress=False, log=lambda m: None, protocol=NAME)
    return root


def test_recording_never_starts_from_an_evaluation_scene(protocol, lerobot_data):
    from graphvla.data.protocol_record import recorded_scene_vectors, recorded_scenes, recording_protocol

    P = protocol
    info = json.loads((lerobot_data / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.corner2"]["shape"] == [32, 32, 3]
    assert info["features"]["observation.state"]["shape"] == [4]
    assert info["total_episodes"] == 4 and recording_protocol(lerobot_data) == NAME
    for task, seeds in recorded_scenes(lerobot_data).items():
        assert not seeds & set(P.eval_scenes(task)), task
    tasks = [json.loads(line)["task"] for line in (lerobot_data / "meta" / "tasks.jsonl").read_text().splitlines()]
    assert tasks == [P.instruction(t) for t in TASKS]  # LeRobot's descriptions are the instructions
    # no recorded scene vector is the vector of an evaluation scene
    env = P.make_env("reach-v3", 2)
    try:
        evaluated = []
        for ep in range(P.EPISODES):
            P.start_episode(env, ep)
            evaluated.append(np.array(env._last_rand_vec))
    finally:
        env.close()
    for vec in recorded_scene_vectors(lerobot_data)["reach-v3"]:
        assert not any(np.allclose(vec, e) for e in evaluated)


def test_recorded_frames_equal_the_evaluation_frames_of_that_scene(protocol, lerobot_data):
    import io

    import pandas as pd
    from PIL import Image

    P = protocol
    episode = json.loads((lerobot_data / "meta" / "episodes.jsonl").read_text().splitlines()[0])
    table = pd.read_parquet(lerobot_data / "data" / "chunk-000" / "episode_000000.parquet")
    def image(cell):  # PNG bytes in the parquet, or a file beside it
        return np.asarray(Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else lerobot_data / cell["path"]))

    recorded = [image(table.iloc[t]["observation.images.corner2"]) for t in range(3)]
    env = P.make_env(episode["env_task"], 32)
    try:
        P.start_episode(env, 0)  # an evaluation env that has already run an episode
        for _ in range(7):
            env.step(np.zeros(4, dtype=np.float32))
        obs, _ = P.start_scene(env, episode["variant"])
        assert np.array_equal(P.frame(env, 32), recorded[0])
        assert np.allclose(table.iloc[0]["observation.state"], obs[:4], atol=1e-6)
        for t in range(1, 3):  # the recorded actions replayed give the recorded frames
            env.step(np.asarray(table.iloc[t - 1]["action"], dtype=np.float32))
            assert np.array_equal(P.frame(env, 32), recorded[t]), t
    finally:
        env.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, lerobot_data):
    run, _, _ = train_protocol_run(tmp_path_factory.mktemp("run"), lerobot_data, steps=20)
    return run


def _eval(run, out, workers, extra=()):
    from graphvla.cli import main

    args = ["eval", str(run), "--protocol", NAME, "--tasks", ",".join(TASKS), "--episodes", "2",
            "--workers", str(workers), "-o", str(out), "--no-gif", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output, json.loads((out / "results.json").read_text())


def test_trained_graph_evaluates_end_to_end_and_workers_change_nothing(tmp_path, tiny_run, lerobot_data, protocol):
    out1, one = _eval(tiny_run, tmp_path / "w1", 1, ["--data", str(lerobot_data)])
    _, two = _eval(tiny_run, tmp_path / "w2", 2)
    assert one["episodes"] == two["episodes"]  # per episode: scene, success, steps, queries
    assert [r["scene"] for r in one["episodes"]["reach-v3"]] == [1000, 1001]
    assert all(1 <= r["steps"] <= protocol.MAX_STEPS for rows in one["episodes"].values() for r in rows)
    assert one["config"]["protocol"] == NAME and one["config"]["max_steps"] == 500 and one["config"]["seed"] == 1000
    assert one["config"]["metaworld"] == protocol.metaworld_version()
    assert one["episodes_from_training_scenes"] == 0
    assert set(one["buckets"]) == {"easy"} and "overall" not in one
    assert one["buckets"]["easy"]["peers"]["smolvla_0.45b"] is None  # 2 of 28 easy tasks: no published figure
    assert "SmolVLA 0.45B" in out1 and "episodes starting from a scene in the training data: 0 of 4" in out1
    assert "bucket figures only" in out1
    assert "| reach-v3 | easy | " in (tmp_path / "w1" / "results.md").read_text()


def test_a_recording_for_another_protocol_is_refused_naming_both(tmp_path, tiny_run, lerobot_data):
    from graphvla.cli import main
    from graphvla.data.protocol_record import check_recording_protocol

    other = tmp_path / "starvla-data"
    (other / "meta").mkdir(parents=True)
    (other / "meta" / "info.json").write_text(json.dumps({"graphvla": {"protocol": "starvla-mt50"}}))
    with pytest.raises(ValueError, match="recorded for protocol 'starvla-mt50'.*protocol 'lerobot-metaworld'"):
        check_recording_protocol([other], NAME)
    check_recording_protocol([lerobot_data], NAME)  # its own protocol is fine
    with pytest.raises(ValueError, match="recorded for protocol 'lerobot-metaworld'.*protocol 'starvla-mt50'"):
        check_recording_protocol([lerobot_data], "starvla-mt50")
    bad = CliRunner().invoke(main, ["eval", str(tiny_run), "--protocol", NAME, "--tasks", "reach-v3", "--episodes",
                                    "1", "--data", str(other), "-o", str(tmp_path / "e"), "--no-gif"])
    assert bad.exit_code != 0
    assert "starvla-mt50" in bad.output and "lerobot-metaworld" in bad.output and "recorded for protocol" in bad.output
    assert not (tmp_path / "e" / "results.json").exists()


def test_unknown_protocol_lists_the_protocols(tmp_path):
    from graphvla.cli import main
    from graphvla.sim import protocol_module

    out = CliRunner().invoke(main, ["eval", "--protocol", "list"])
    assert out.exit_code == 0 and "starvla-mt50" in out.output and "lerobot-metaworld" in out.output
    bad = CliRunner().invoke(main, ["eval", str(REPO), "--protocol", "lerobot-mt50"])
    assert bad.exit_code != 0 and "unknown protocol" in bad.output
    assert "starvla-mt50" in bad.output and "lerobot-metaworld" in bad.output
    data = CliRunner().invoke(main, ["data", "metaworld", "-o", str(tmp_path / "d"), "--protocol", "lerobot"])
    assert data.exit_code != 0 and "starvla-mt50" in data.output and "lerobot-metaworld" in data.output
    with pytest.raises(ValueError, match="unknown protocol 'x' .*starvla-mt50, lerobot-metaworld"):
        protocol_module("x")


def test_overall_is_the_bucket_mean_beside_the_published_rows():
    from graphvla.runners.eval.protocol import format_protocol_markdown, format_protocol_table, summarize_protocol
    from graphvla.sim import lerobot_metaworld as P

    per_task = {t: [{"success": (i + k) % 3 == 0, "scene_vector": [0.0]} for i in range(10)]
                for k, t in enumerate(P.tasks())}
    s = summarize_protocol(per_task, protocol=NAME)
    rates = [s["buckets"][b]["success_rate"] for b in P.BUCKETS]
    assert s["protocol"] == NAME and s["overall"]["success_rate"] == pytest.approx(sum(rates) / 4)
    assert s["overall"]["peers"]["evo1_0.77b"] == pytest.approx(0.806)
    assert s["buckets"]["hard"]["peers"]["pi0"] is None  # bucket figures not held
    # 6 of 10 episodes in every task: 60% overall, compared on the overall with the peer's spread bounded
    same = summarize_protocol({t: [{"success": i < 6, "scene_vector": [0.0]} for i in range(10)] for t in P.tasks()},
                              protocol=NAME)
    d = same["versus_peers"]["smolvla_0.45b"]
    assert d["difference"] == pytest.approx(0.6 - 0.573) and d["bounded"] and not d["significant"]
    assert same["versus_peers"]["diffusion_policy"]["significant"]  # 60% against 10.5%: a real difference
    # the bound is conservative: its interval is wider than with any bucket rates of the row's mean
    rows = {b: 0.573 for b in P.BUCKETS}
    exact_var = sum((1 / 16) * (((6 * n + 1) / (10 * n + 2)) * (1 - (6 * n + 1) / (10 * n + 2)) / (10 * n + 2)
                                + ((rows[b] * 10 * n + 1) / (10 * n + 2)) * (1 - (rows[b] * 10 * n + 1) / (10 * n + 2))
                                / (10 * n + 2))
                    for b, n in ((b, len(P.bucket_tasks()[b])) for b in P.BUCKETS))
    assert (d["ci95"][1] - d["difference"]) / 1.959964 >= exact_var ** 0.5
    assert "conservative test" in format_protocol_markdown(same)
    table = format_protocol_table(s)
    assert "overall" in table and "Evo-1 0.77B" in table and "80.6%" in table
    assert "Evo-1 0.77B" in format_protocol_markdown(s)
    # no peer publishes per-task rates: the task table has exactly task, bucket and ours, no empty columns
    task_table = format_protocol_markdown(s).split("| task |")[1].split("\n\n")[0]
    widths = {line.count("|") for line in ("| task |" + task_table).splitlines() if line.startswith("|")}
    assert widths == {4}, widths
    subset = summarize_protocol({t: per_task[t] for t in P.bucket_tasks()["hard"]}, protocol=NAME)
    assert subset["buckets"]["hard"]["peers"]["tinyvla"] is None  # bucket figures not held
    assert subset["mean"]["peers"]["tinyvla"] is None and subset["versus_peers"] == {}
