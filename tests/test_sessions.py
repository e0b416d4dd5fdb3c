"""One session per client: the every-k System-2 cache, the call counter and the noise generator
belong to a connection, not to the server. Three clients interleaved on one batching server get
exactly what each gets alone on a fresh server; a reset is one client's; a seeded session
replays. The graph is tiny/dualsystem (a dual-system flow head: it samples noise, and its VLM runs
`infer: {every: 4}`), with random weights and no normalizer, on CPU."""
from __future__ import annotations

import json
import threading
import urllib.request

import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from graphvla import compile_graph
from graphvla.client import PolicyClient, ServerError
from graphvla.protocol import RESET_KEY, SESSION_SEED_KEY
from graphvla.policy.policy import Policy
from graphvla.runners.serve import ServeOptions, ServerThread
from graphvla.policy.session import session_seed

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

KEY_MAP = {"observation/image": "images[0]", "observation/state": "state", "prompt": "instruction"}
SEED = 1234
STEPS = 9  # every client's script length: the VLM refreshes at calls 0, 4 and 8 of an episode


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    policy = Policy.from_compiled(compile_graph("tiny/dualsystem", device="cpu"))
    with torch.no_grad():  # the untrained DiT's adaLN gates are zero, so it would ignore System 2
        for p in policy.cg.model["head"].parameters():
            if not p.any():
                p.normal_(0, 0.2)
    # record the batch each forward of the head (System 1) really runs with, and each VLM call
    head, vlm = policy.cg.model["head"], policy.cg.model["vlm"]
    policy.head_batches, policy.vlm_batches = [], []

    def spy(fn, log, key):
        def wrapped(**ports):
            log.append(int(ports[key].shape[0]))
            return fn(**ports)
        return wrapped

    head.predict = spy(head.predict, policy.head_batches, "context")
    vlm.predict = spy(vlm.predict, policy.vlm_batches, "input_ids")  # its processor step's tokens
    return policy


def obs(client: int, t: int, prompt: str = "push the puck") -> dict:
    rng = np.random.default_rng(1000 * client + t)
    return {"observation/image": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "observation/state": rng.standard_normal(4).astype(np.float32), "prompt": prompt}


def ports(o: dict) -> dict:
    return {"images": o["observation/image"], "state": o["observation/state"], "instruction": o["prompt"]}


# A script is one entry per step: ("reset", session_seed or None) or ("obs", observation).
# Client 1 starts a new episode in the middle; client 2 (openpi's own client) starts a step late
# with another observation in between, so the clients' every-4 windows are out of phase: a batch
# holds rows whose System 2 is due beside rows that reuse their features.
SCRIPTS = {
    0: [("reset", None)] + [("obs", obs(0, t)) for t in range(STEPS - 1)],
    1: [("reset", 7)] + [("obs", obs(1, t)) for t in range(3)] + [("reset", 7)] + [("obs", obs(1, t)) for t in range(4)],
    2: [("reset", 11), ("obs", obs(2, 99)), ("reset", 11)] + [("obs", obs(2, t)) for t in range(STEPS - 3)],
}


def connect(srv, i):
    return WebsocketClientPolicy("127.0.0.1", srv.port) if i == 2 else PolicyClient("127.0.0.1", srv.port)


def step(client, kind, value):
    if kind == "obs":
        return client.infer(value)
    if isinstance(client, PolicyClient):
        return client.reset(value)
    # openpi-client: a reset is a plain request map holding the reset key
    return client.infer({RESET_KEY: True} if value is None else {RESET_KEY: True, SESSION_SEED_KEY: value})


def run(policy, scripts: dict, **options) -> tuple[dict, dict]:
    """Run the scripts, one thread per client, step by step in lockstep (a barrier before every
    step), against one fresh server. Returns ({client: [actions of each obs step]}, healthz)."""
    replies = {i: [] for i in scripts}
    errors = []
    barrier = threading.Barrier(len(scripts))
    opts = dict(port=0, key_map=KEY_MAP, max_batch=4, max_wait_ms=300, seed=SEED)
    opts.update(options)
    with ServerThread(policy, ServeOptions(**opts)) as srv:
        clients = {i: connect(srv, i) for i in scripts}

        def work(i):
            try:
                for kind, value in scripts[i]:
                    barrier.wait(60)
                    out = step(clients[i], kind, value)
                    if kind == "obs":
                        replies[i].append(out)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(i,)) for i in scripts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10) as r:
            health = json.loads(r.read())
        for c in clients.values():
            (c.close if isinstance(c, PolicyClient) else c._ws.close)()  # openpi's client has no close()
    assert not errors, errors
    return replies, health


def actions(replies):
    return np.stack([r["actions"] for r in replies])


def test_interleaved_clients_get_what_each_gets_alone(policy):
    del policy.head_batches[:]
    together, health = run(policy, SCRIPTS)
    # batching really happened: the batcher grouped requests and the head ran them as one batch
    assert max(r["server_timing"]["batch_size"] for rs in together.values() for r in rs) == 3
    assert health["batch_sizes"].get("3", 0) >= 3 and max(policy.head_batches) == 3
    for i, script in SCRIPTS.items():
        alone, _ = run(policy, {i: script})
        assert all(r["server_timing"]["batch_size"] == 1 for r in alone[i])
        # same noise, same System-2 features: equal up to batched float arithmetic
        np.testing.assert_allclose(actions(together[i]), actions(alone[i]), rtol=1e-5, atol=1e-6)
    # client 1's second episode (after its reset, same seed) replays its first. Not bitwise: its
    # step 1 ran in a batch of 2 the first time (client 2 was resetting) and of 3 the second, and
    # a CPU matrix product's rows can differ in the last bit between batch sizes (2.4e-7 here)
    np.testing.assert_allclose(actions(together[1][3:6]), actions(together[1][:3]), rtol=1e-5, atol=1e-6)
    # the test can tell: System 2's features reach the actions (stale features give other actions)
    stale, fresh = policy.new_session(), policy.new_session()
    policy.infer(ports(obs(0, 0)), stale)
    policy.infer(ports(obs(0, 1)), fresh)
    assert np.abs(policy.infer(ports(obs(0, 1)), stale)["actions"]
                  - policy.infer(ports(obs(0, 1)), fresh)["actions"]).max() > 1e-2


def test_one_clients_reset_changes_nothing_for_the_others(policy):
    base, _ = run(policy, SCRIPTS)
    # client 1 resets at every step (its VLM reruns each time, its generator restarts); others unchanged
    noisy = dict(SCRIPTS)
    noisy[1] = [entry for t in range(STEPS // 2) for entry in (("reset", 3), ("obs", obs(1, t)))] + [("reset", 3)]
    changed, _ = run(policy, noisy)
    for i in (0, 2):
        np.testing.assert_allclose(actions(changed[i]), actions(base[i]), rtol=1e-5, atol=1e-6)
    # every answer of client 1 is now the first step of a fresh episode of obs(1, t)
    fresh = policy.new_session(session_seed(SEED, 3))
    for t, r in enumerate(changed[1]):
        fresh.reset()
        np.testing.assert_allclose(r["actions"], policy.infer(ports(obs(1, t)), fresh)["actions"], rtol=1e-5, atol=1e-6)


def test_a_session_replays_from_its_seed(policy):
    script = [("obs", obs(5, t)) for t in range(6)]
    with ServerThread(policy, ServeOptions(port=0, key_map=KEY_MAP, seed=SEED)) as srv:
        assert PolicyClient("127.0.0.1", srv.port).metadata["seed"] == SEED
        with PolicyClient("127.0.0.1", srv.port) as a, PolicyClient("127.0.0.1", srv.port) as b:
            first = actions([a.infer(o) for _, o in script])  # no reset: a fresh session is seeded with SEED
            assert a.reset()["seed"] == SEED
            again = actions([a.infer(o) for _, o in script])
            other = actions([b.infer(o) for _, o in script])  # a later connection: same seed, same actions
            assert a.reset(session_seed=9)["seed"] == session_seed(SEED, 9) != SEED
            seeded = actions([a.infer(o) for _, o in script])
            a.reset()  # keeps the session's seed (now the mix with 9)
            seeded_again = actions([a.infer(o) for _, o in script])
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(other, first)
    np.testing.assert_array_equal(seeded_again, seeded)
    assert np.abs(seeded - first).max() > 1e-2  # the noise matters: another seed, other actions
    with ServerThread(policy, ServeOptions(port=0, key_map=KEY_MAP, seed=SEED + 1)) as srv, \
            PolicyClient("127.0.0.1", srv.port) as c:
        assert np.abs(actions([c.infer(o) for _, o in script]) - first).max() > 1e-2


@pytest.mark.parametrize("request_map, words", [
    ({RESET_KEY: "yes"}, f"'{RESET_KEY}': expected true \\(a reset request\\), got str 'yes'"),
    ({RESET_KEY: 1}, f"'{RESET_KEY}': expected true"),
    ({RESET_KEY: False}, f"'{RESET_KEY}': expected true"),
    ({RESET_KEY: {"session_seed": 3}}, f"'{RESET_KEY}': expected true"),
    ({RESET_KEY: True, SESSION_SEED_KEY: 1.5}, f"'{SESSION_SEED_KEY}': expected an integer in \\[0, 2\\*\\*64\\), got float"),
    ({RESET_KEY: True, SESSION_SEED_KEY: "7"}, f"'{SESSION_SEED_KEY}': expected an integer"),
    ({RESET_KEY: True, SESSION_SEED_KEY: True}, f"'{SESSION_SEED_KEY}': expected an integer"),
    ({RESET_KEY: True, SESSION_SEED_KEY: -1}, f"'{SESSION_SEED_KEY}': expected an integer in \\[0, 2\\*\\*64\\), got -1"),
    ({RESET_KEY: True, "seed": 3}, "unexpected key 'seed' in a reset request"),
])
def test_bad_reset_requests_get_a_named_error(policy, request_map, words):
    with ServerThread(policy, ServeOptions(port=0, key_map=KEY_MAP, seed=SEED)) as srv, \
            PolicyClient("127.0.0.1", srv.port) as c:
        expected = c.infer(obs(6, 0))["actions"]
        c.reset()
        with pytest.raises(ServerError, match=words):
            c.infer(request_map)
        # the connection and its session go on untouched: still the fresh episode of SEED
        np.testing.assert_array_equal(c.infer(obs(6, 0))["actions"], expected)
        openpi = WebsocketClientPolicy("127.0.0.1", srv.port)
        with pytest.raises(RuntimeError, match=words):  # the same for openpi's client
            openpi.infer(request_map)
        # numpy scalars, as openpi's packer writes them, are fine
        reply = openpi.infer({RESET_KEY: np.bool_(True), SESSION_SEED_KEY: np.int64(5)})
        assert reply == {"reset": True, "seed": session_seed(SEED, 5)}


def test_bad_server_seed_is_refused(policy):
    from graphvla.runners.serve import PolicyServer

    for seed in (-1, 1.5, "3", 2 ** 64):
        with pytest.raises(ValueError, match="serve.seed: expected an integer in"):
            PolicyServer(policy, ServeOptions(key_map=KEY_MAP, seed=seed))


def test_seed_from_the_serve_section_and_the_command_line(tmp_path):
    import graphvla.cli  # noqa: F401  (command modules are imported through the CLI)
    from graphvla.runners.serve.section import serve_options, serve_section

    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "spec.yaml").write_text("name: x\nserve:\n  seed: 5\n")
    section = serve_section(str(tmp_path), [], [])
    assert section["seed"] == 5 and serve_section(str(tmp_path), ["serve.seed=6"], [])["seed"] == 6
    assert serve_options(section, "127.0.0.1", 0, None, None, None, None).seed == 5  # as graphvla eval calls it
    assert serve_options(section, "127.0.0.1", 0, None, None, None, None, seed=8).seed == 8  # --seed
    assert serve_section(None, [], [])["seed"] == 0


# --- the Policy API under the server ------------------------------------------------------------


def test_rows_of_one_batch_use_their_own_sessions(policy):
    """Batched with per-session generators and caches, each row equals its session run alone, also
    when the sessions are at different points of their every-4 windows."""
    sessions = [policy.new_session(s) for s in (1, 2, 3)]
    solo = [policy.new_session(s) for s in (1, 2, 3)]
    policy.infer(ports(obs(9, 0)), sessions[0])  # session 0 is one step ahead: its windows differ
    policy.infer(ports(obs(9, 0)), solo[0])
    for t in range(6):
        batch = [ports(obs(i, t)) for i in range(3)]
        outs = policy.infer_batch(batch, sessions=sessions)
        for i in range(3):
            np.testing.assert_allclose(outs[i]["actions"], policy.infer(batch[i], solo[i])["actions"], rtol=1e-5, atol=1e-6)
    assert [s.steps for s in sessions] == [7, 6, 6]
    # the policy's own (session-less) cache was never touched by the sessions
    assert all(m.cache is None for m in policy.cg.infer.modules() if hasattr(m, "cache_batch"))


def test_different_instructions_run_row_by_row_computing_system2_once(policy):
    """Instructions of different token lengths give System-2 features of different shapes: the rows
    cannot share a batch, so they run one by one, reusing the features computed on the first try."""
    prompts = ["push", "open the drawer and then close it again slowly", "pick up the puck"]
    sessions = [policy.new_session(i) for i in range(3)]
    solo = [policy.new_session(i) for i in range(3)]
    for t in range(5):
        batch = [ports(obs(i, t, prompts[i])) for i in range(3)]
        del policy.vlm_batches[:]
        outs = policy.infer_batch(batch, sessions=sessions)
        assert policy.vlm_batches == ([1, 1, 1] if t % 4 == 0 else [])  # each System 2 once, alone
        for i in range(3):
            np.testing.assert_array_equal(outs[i]["actions"], policy.infer(batch[i], solo[i])["actions"])


def test_a_failed_batch_moves_no_session(policy):
    sessions = [policy.new_session(i) for i in range(2)]
    policy.infer(ports(obs(0, 0)), sessions[0])
    before = [(s.generator.get_state().clone(), dict(s.caches), s.steps) for s in sessions]
    bad = {**ports(obs(1, 0)), "state": None}
    with pytest.raises(ValueError, match="lacks 'state'"):
        policy.infer_batch([ports(obs(0, 1)), bad], sessions=sessions)
    for s, (state, caches, steps) in zip(sessions, before):
        assert torch.equal(s.generator.get_state(), state) and s.caches == caches and s.steps == steps
    with pytest.raises(ValueError, match="one observation in a batch"):
        policy.infer_batch([ports(obs(0, 1))] * 2, sessions=[sessions[0]] * 2)
