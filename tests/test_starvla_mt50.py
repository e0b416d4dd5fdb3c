"""The starVLA MT50 protocol: its scenes equal make_vec's, recording never uses an evaluation scene and
sees the evaluation's pixels, workers do not change results, and a tiny graph goes from protocol data
through training to a protocol evaluation."""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, require_metaworld, train_protocol_run

TASKS = ["reach-v3", "dial-turn-v3"]


@pytest.fixture(scope="module")
def protocol():
    require_metaworld()
    from graphvla.sim import starvla_mt50 as P

    return P


def test_the_table_and_buckets_come_from_the_anchors(protocol):
    P = protocol
    assert [len(P.bucket_tasks()[b]) for b in P.BUCKETS] == [28, 11, 6, 5]
    assert len(set(P.tasks())) == 50
    assert P.peer_rates()["la_finetune"]["overall"] == pytest.approx(0.709)
    mt10 = P.select(names=["MT10"])
    assert len(mt10) == 10 and mt10 == [t for t in P.tasks() if t in mt10]  # protocol order
    with pytest.raises(ValueError, match="did you mean 'reach-v3'"):
        P.select(names=["reach-v2"])
    with pytest.raises(ValueError, match="unknown bucket"):
        P.select(buckets=["trivial"])


def test_every_task_has_an_instruction():
    from graphvla.sim import metaworld as mw

    import metaworld

    assert set(mw.INSTRUCTIONS) == set(metaworld.ALL_V3_ENVIRONMENTS)
    assert len(set(mw.INSTRUCTIONS.values())) == 50  # tells every task apart
    with pytest.raises(ValueError, match="did you mean"):
        mw.instruction("reach-v2")


class _KeptConstructors:
    """Stands in for gymnasium's SyncVectorEnv inside make_vec: keeps the sub-environment constructors
    make_vec hands it (SyncVectorEnv's __init__ only calls each one once, in order) without calling them."""

    def __init__(self, env_fns, **kwargs):
        self.env_fns, self.kwargs = list(env_fns), kwargs
        self.metadata = {"autoreset_mode": kwargs.get("autoreset_mode")}
        self.unwrapped = self  # make_vec sets .unwrapped.spec


# built and reset: one task or more of each bucket (easy, easy, medium, hard, very hard)
SAMPLE = ("button-press-topdown-v3", "reach-v3", "basketball-v3", "assembly-v3", "stick-push-v3")


def test_first_scenes_equal_make_vec_with_seed_4042(protocol, monkeypatch):
    """The protocol's own construction: make_vec MT50, seed 4042; per task reset(seed=4042+ep).

    make_vec is called exactly as the protocol names it (so Meta-World's MT50(seed=4042) benchmark,
    the ~30 s part, is generated as make_vec generates it), with its SyncVectorEnv replaced by
    _KeptConstructors: the 50 sub-environment constructors are kept, not all called (building 50
    rendering envs took a further ~8 s of CPU). Checked for every one of the 50 tasks: its name and
    position in MT50's order, the constructor's arguments that decide the scenes (class, seed 4042,
    env_id, 50 tasks, rgb_array, corner2: those make_env passes) and its 50 Tasks (scene vectors),
    which must equal the ones P.variants rebuilds from the cached vectors. Built by that constructor (as
    SyncVectorEnv builds it) and reset with seeds 4042-4044, compared with make_env's episodes 0-2:
    the five SAMPLE tasks (each bucket; not the other 45)."""
    import pickle

    import gymnasium as gym
    import metaworld

    P = protocol
    monkeypatch.setattr(gym.vector, "SyncVectorEnv", _KeptConstructors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vec = gym.make_vec("Meta-World/MT50", vector_strategy="sync", seed=P.SEED, render_mode="rgb_array",
                           camera_name=P.CAMERA)
    monkeypatch.undo()
    assert isinstance(vec, _KeptConstructors) and len(vec.env_fns) == 50
    names = []
    for env_id, fn in enumerate(vec.env_fns):
        args = fn.keywords
        task = args["tasks"][0].env_name
        names.append(task)
        assert args["env_cls"] is metaworld._env_dict.MT50_V3[task], task
        assert (args["seed"], args["env_id"], args["num_tasks"]) == (P.SEED, env_id, 50), task
        assert (args["render_mode"], args["camera_name"]) == ("rgb_array", P.CAMERA), task
        # the Tasks rebuilt from the cached scene vectors are make_vec's own
        theirs = [pickle.loads(t.data) for t in args["tasks"]]
        ours_tasks = [pickle.loads(t.data) for t in P.variants(task)]
        assert len(ours_tasks) == len(theirs) == 50
        for a, b in zip(ours_tasks, theirs):
            assert a.keys() == b.keys() and np.array_equal(a.pop("rand_vec"), b.pop("rand_vec")) and a == b, task
    assert names == P._order() and sorted(names) == sorted(P.tasks())
    assert {P.bucket_of(t) for t in SAMPLE} == set(P.BUCKETS)
    for task in SAMPLE:
        fn = vec.env_fns[names.index(task)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = fn()  # what SyncVectorEnv.__init__ does with it
        try:
            assert [t.data for t in env.get_wrapper_attr("tasks")] == [t.data for t in fn.keywords["tasks"]]
            expected = []
            for ep in range(3):
                env.reset(seed=P.SEED + ep)
                expected.append(np.array(env.unwrapped._last_rand_vec))
        finally:
            env.close()
        ours = P.make_env(task, 16)
        try:
            for ep in range(3):
                P.start_episode(ours, ep)
                assert np.array_equal(ours.unwrapped._last_rand_vec, expected[ep]), (task, ep)
        finally:
            ours.close()
        assert len(P.eval_scenes(task, 3)) == 3


def test_frame_is_the_centre_of_a_rotated_one_and_a_half_size_render(protocol):
    P = protocol
    env = P.make_env("reach-v3", 32)
    try:
        P.start_episode(env, 0)
        frame = P.frame(env, 32)
        raw = env.render()
        assert raw.shape == (48, 48, 3) and frame.shape == (32, 32, 3)
        assert np.array_equal(frame, raw[::-1, ::-1][8:40, 8:40])
    finally:
        env.close()
    with pytest.raises(ValueError, match="even"):
        P.render_size(33)


@pytest.fixture(scope="module")
def protocol_data(tmp_path_factory, protocol):
    from graphvla.data.protocol_record import record_protocol

    root = tmp_path_factory.mktemp("mt50") / "data"
    record_protocol(root, TASKS, episodes=2, size=32, workers=1, progress=False, log=lambda m: None)
    return root


def test_recording_never_starts_from_an_evaluation_scene(protocol, protocol_data):
    from graphvla.data.protocol_record import recorded_scenes

    P = protocol
    info = json.loads((protocol_data / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.corner2"]["shape"] == [32, 32, 3]
    assert info["features"]["observation.state"]["shape"] == [4]
    assert info["features"]["observation.environment_state"]["shape"] == [39]
    assert info["total_episodes"] == 4
    for task, variants in recorded_scenes(protocol_data).items():
        assert not variants & set(P.eval_scenes(task)), task


def test_recorded_frame_equals_the_evaluation_frame_of_that_scene(protocol, protocol_data):
    import pandas as pd
    from PIL import Image

    P = protocol
    episode = json.loads((protocol_data / "meta" / "episodes.jsonl").read_text().splitlines()[0])
    row = pd.read_parquet(protocol_data / "data" / "chunk-000" / "episode_000000.parquet").iloc[0]
    recorded = np.asarray(Image.open(io.BytesIO(row["observation.images.corner2"]["bytes"])))
    env = P.make_env(episode["env_task"], 32)
    try:
        # an evaluation env reaches the same scene by resetting until its generator draws it
        for ep in range(200):
            P.start_episode(env, ep)
            if P.scene_of(env) == episode["variant"]:
                break
        else:
            pytest.fail("the scene never came up")
        assert np.array_equal(P.frame(env, 32), recorded)
        assert np.allclose(row["observation.environment_state"][:4], row["observation.state"], atol=1e-6)
    finally:
        env.close()


def test_recording_resumes_and_refuses_other_options(tmp_path, protocol):
    from graphvla.data.protocol_record import PARTS, record_protocol, record_task

    out = tmp_path / "data"
    (out / PARTS).mkdir(parents=True)
    (out / PARTS / "settings.json").write_text(json.dumps({"protocol": protocol.NAME, "episodes": 1, "size": 16}))
    record_task(out / PARTS / "reach-v3", "reach-v3", 1, 16, progress=False)  # as if cut off after one task
    (out / PARTS / "dial-turn-v3" / "meta").mkdir(parents=True)  # a torn part: no info.json
    logs = []
    with pytest.raises(ValueError, match="interrupted recording"):
        record_protocol(out, TASKS, episodes=2, size=16, progress=False, log=logs.append)
    summary = record_protocol(out, TASKS, episodes=1, size=16, progress=False, log=logs.append)
    assert any("resuming: 1 of 2" in m for m in logs)
    assert summary["per_task"] == {"reach-v3": 1, "dial-turn-v3": 1}
    assert not (out / PARTS).exists()


@pytest.fixture(scope="module")
def tiny_protocol_run(tmp_path_factory, protocol_data):
    run, data_yaml, result = train_protocol_run(tmp_path_factory.mktemp("run"), protocol_data, steps=30)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    return run, data_yaml


def _eval(run, out, workers, data=None):
    from graphvla.cli import main

    args = ["eval", str(run), "--protocol", "starvla-mt50", "--tasks", ",".join(TASKS), "--episodes", "2",
            "--workers", str(workers), "-o", str(out), "--no-gif"]
    if data:
        args += ["--data", str(data)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output, json.loads((out / "results.json").read_text())


def test_tiny_graph_trains_on_protocol_data_and_workers_change_nothing(tmp_path, tiny_protocol_run, protocol_data):
    run, _ = tiny_protocol_run
    out1, one = _eval(run, tmp_path / "w1", 1, data=protocol_data)
    _, two = _eval(run, tmp_path / "w2", 2)
    assert one["episodes"] == two["episodes"]  # per episode: scene, success, steps, queries
    assert [r["scene"] for r in one["episodes"]["reach-v3"]] == [40, 4]  # the protocol's first draws
    assert one["episodes_from_training_scenes"] == 0
    assert set(one["buckets"]) == {"easy"} and "overall" not in one  # a subset has no protocol overall
    assert "starVLA LA-pretrained finetune" in out1 and "episodes starting from a scene in the training data: 0 of 4" in out1
    assert one["config"]["execute_steps"] == 4  # the graph's serve.execute_steps
    assert "| reach-v3 | easy | " in (tmp_path / "w1" / "results.md").read_text()


def test_validation_scenes_avoid_the_evaluation_and_the_recording(tmp_path, protocol, tiny_protocol_run, protocol_data):
    """`graphvla eval --protocol P --validation`: each episode starts from a scene of the protocol's
    env that neither its evaluation nor the recording starts from, in the recorder's order; the
    summary is marked and set beside no published row; without the recording it is refused."""
    from graphvla.cli import main
    from graphvla.data.protocol_record import recorded_scenes, validation_scenes

    P = protocol
    recorded = recorded_scenes(protocol_data)
    expected = {}
    for task in TASKS:
        free = [v for v in range(len(P.variants(task))) if v not in recorded[task] and v not in P.eval_scenes(task)]
        expected[task] = free[:2]
        assert validation_scenes(P.NAME, task, recorded[task], 2) == expected[task]
        assert validation_scenes(P.NAME, task, set(range(50)), 2) == []  # nothing left
    run, _ = tiny_protocol_run
    args = ["eval", str(run), "--protocol", "starvla-mt50", "--tasks", ",".join(TASKS), "--episodes", "2",
            "--validation", "--no-gif"]
    result = CliRunner().invoke(main, args + ["--data", str(protocol_data), "-o", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "v" / "results.json").read_text())
    assert {t: [r["scene"] for r in rows] for t, rows in summary["episodes"].items()} == expected
    assert summary["validation"] is True and summary["versus_peers"] is None
    assert summary["episodes_from_training_scenes"] == 0
    markdown = (tmp_path / "v" / "results.md").read_text()
    assert markdown.startswith("Validation scenes") and "starVLA" not in markdown and "starVLA" not in result.output
    committed = REPO / "docs" / "results" / "mt50" / "run"  # a committed run names no recording
    refused = CliRunner().invoke(main, ["eval", str(committed)] + args[2:] + ["-o", str(tmp_path / "none")])
    assert refused.exit_code == 1 and "--validation needs the starvla-mt50 recording" in refused.output
    suite = CliRunner().invoke(main, ["eval", str(run), "--validation"])
    assert suite.exit_code == 1 and "--validation need --protocol" in suite.output


def test_the_inference_thread_count_is_set_recorded_and_checked(tmp_path, tiny_protocol_run):
    """Closed-loop episodes depend on the forward passes' thread count, so `--threads` sets it for the
    server the command starts and results.json records it; a count it cannot apply is refused."""
    from graphvla.cli import main

    import torch

    run, _ = tiny_protocol_run
    args = ["eval", str(run), "--protocol", "starvla-mt50", "--tasks", TASKS[0], "--episodes", "1", "--no-gif"]
    mine = torch.get_num_threads()
    asked = 1 if mine != 1 else 2
    result = CliRunner().invoke(main, args + ["--threads", str(asked), "-o", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t" / "results.json").read_text())["config"]["inference_threads"] == asked
    assert torch.get_num_threads() == mine  # the caller's count is given back
    zero = CliRunner().invoke(main, args + ["--threads", "0"])
    assert zero.exit_code == 1 and "--threads 0: must be >= 1" in zero.output
    remote = CliRunner().invoke(main, ["eval", "--server", "ws://127.0.0.1:9", *args[2:], "--threads", "2"])
    assert remote.exit_code == 1 and "--server names one already running" in remote.output
    suite = CliRunner().invoke(main, ["eval", str(run), "--threads", "2"])
    assert suite.exit_code == 1 and "--threads and --validation need --protocol" in suite.output


def test_suite_eval_of_a_run_serves_it_locally_and_refuses_other_set_keys(tmp_path, tiny_protocol_run):
    """`graphvla eval RUN` without --protocol: the run is served from a thread of the command with its
    serve section, evaluated on GraphVLA's own suite, and the server is gone afterwards."""
    import threading

    from graphvla.cli import main
    from graphvla.policy.checkpoint import resolve_checkpoint

    run, _ = tiny_protocol_run
    args = ["eval", str(run), "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "20", "--no-gif"]
    result = CliRunner().invoke(main, args + ["-o", str(tmp_path / "suite"), "--set", "serve.max_batch=1"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "suite" / "results.json").read_text())
    fingerprint = json.loads((resolve_checkpoint(run) / "graph.json").read_text())["fingerprint"]
    assert saved["config"]["fingerprint"] == fingerprint and saved["config"]["seeds"] == [100000, 100000]
    assert 1 <= saved["episodes"]["reach-v3"][0]["steps"] <= 20 and "reach-v3" in result.output
    assert not [t for t in threading.enumerate() if t.name == "graphvla-serve"]  # the server thread stopped
    bad = CliRunner().invoke(main, args + ["--set", "trainer.lr=1"])
    assert bad.exit_code == 1 and "Error: --set trainer.lr=1: here only serve.* keys can be set" in bad.output


def test_protocol_list_and_bad_names():
    from graphvla.cli import main

    out = CliRunner().invoke(main, ["eval", "--protocol", "list"])
    assert out.exit_code == 0 and "starvla-mt50" in out.output
    bad = CliRunner().invoke(main, ["eval", str(REPO), "--protocol", "starvla-mt5"])
    assert bad.exit_code != 0 and "unknown protocol" in bad.output


def test_overall_is_the_mean_of_bucket_rates():
    from graphvla.runners.eval.protocol import stratified_interval, summarize_protocol
    from graphvla.sim import starvla_mt50 as P

    per_task = {t: [{"success": (i + k) % 2 == 0, "scene_vector": [0.0]} for i in range(10)]
                for k, t in enumerate(P.tasks())}
    s = summarize_protocol(per_task)
    rates = [s["buckets"][b]["success_rate"] for b in P.BUCKETS]
    assert s["overall"]["success_rate"] == pytest.approx(sum(rates) / 4)
    lo, hi = s["overall"]["ci95"]
    assert lo < s["overall"]["success_rate"] < hi
    assert stratified_interval([1.0, 1.0], [10, 10])[1] == 1.0


class _Recording:
    """A client wrapper that keeps every chunk the server sent (picklable only with workers=1)."""

    def __init__(self, connect, chunks):
        self.connect, self.chunks = connect, chunks

    def __call__(self):
        client = self.connect()
        original = client.infer

        def infer(obs):
            reply = original(obs)
            if "actions" in reply:
                self.chunks.append(np.asarray(reply["actions"]))
            return reply

        client.infer = infer
        return client


def test_an_independent_client_following_the_metadata_gets_evals_actions(tiny_protocol_run, protocol):
    """A client that knows only the metadata (keys, image size, execute_steps) and the protocol."""
    from functools import partial

    from graphvla.client import PolicyClient
    from graphvla.runners.eval.evaluate import ProtocolAdapter
    from graphvla.runners.eval.protocol import evaluate_protocol
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServeOptions, ServerThread
    from graphvla.sim import metaworld as mw

    P = protocol
    run, _ = tiny_protocol_run
    thread = ServerThread(load_policy(run), ServeOptions(port=0, max_batch=1, execute_steps=4)).start()
    try:
        connect = partial(PolicyClient, thread.url, None)
        via_eval = []
        evaluate_protocol(_Recording(connect, via_eval), ProtocolAdapter("metaworld", {}, None, True), ["reach-v3"],
                          episodes=1, gifs=False, log=lambda m: None)
        mine = []
        with connect() as client:
            meta = client.metadata
            keys = {meta["key_map"][k]: k for k in meta["observation_keys"]}  # port -> client key
            size = meta["inputs"]["images"]["size"][0]
            env = P.make_env("reach-v3", size)
            try:
                obs, _ = P.start_episode(env, 0)
                client.reset()
                queue = []
                for _ in range(P.MAX_STEPS):
                    if not queue:
                        chunk = client.infer({keys["images"]: P.frame(env, size)[None], keys["instruction"]: mw.instruction("reach-v3"),
                                              keys["state"]: mw.robot_state(obs)})["actions"]
                        mine.append(np.asarray(chunk))
                        queue = list(chunk[: meta["execute_steps"]])
                    obs, _, _, _, info = env.step(P.clip_action(env, queue.pop(0)))
                    if info["success"] == 1:
                        break
            finally:
                env.close()
    finally:
        thread.stop()
    assert meta["execute_steps"] == 4
    assert len(mine) == len(via_eval) > 50
    assert all(np.array_equal(a, b) for a, b in zip(mine, via_eval))


def test_a_difference_from_starvla_is_claimed_only_when_the_test_supports_it():
    from graphvla.runners.eval.protocol import summarize_protocol
    from graphvla.sim import starvla_mt50 as P

    def episodes(rate_of):
        return {t: [{"success": i < round(10 * rate_of(t)), "scene_vector": [0.0]} for i in range(10)] for t in P.tasks()}

    same = summarize_protocol(episodes(lambda t: P.peer_rates(t)["la_finetune"]))["versus_peers"]["la_finetune"]
    assert abs(same["difference"]) < 1e-9 and not same["significant"] and same["ci95"][0] < 0 < same["ci95"][1]
    worse = summarize_protocol(episodes(lambda t: 0.2))["versus_peers"]["la_finetune"]
    assert worse["significant"] and worse["ci95"][1] < 0
    nearly = summarize_protocol(episodes(lambda t: min(1.0, P.peer_rates(t)["la_finetune"] + 0.1 * (t == "reach-v3"))))
    assert not nearly["versus_peers"]["la_finetune"]["significant"]  # one task one episode better: no claim
