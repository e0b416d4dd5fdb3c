"""Real-time chunking: the guided flow sampler inpaints the committed steps, d = 0 changes nothing
(bitwise), regression heads get exact prefix replacement and a linear blend, the session's previous
chunk can stand in for resent actions, and bad requests get named errors without moving a session
or stopping the server. Graphs: the MT10 graph (small CNN + MLP head) and the same graph with a
flow-matching or dual-system head, random weights, no normalizer, on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from graphvla import compile_graph
from graphvla.client import PolicyClient, ServerError
from graphvla.protocol import RTC_KEY
from graphvla.policy import rtc as R
from graphvla.policy.policy import Policy
from graphvla.runners.serve import ServeOptions, ServerThread
from graphvla.spec.loader import load_spec

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

FLOW = ["blocks.head.type=head.flow_matching", "blocks.head.with={width: 32, heads: 4, layers: 2, num_steps: 6}"]
DUAL = ["blocks.head.type=head.dual_system",
        "blocks.head.with={width: 32, heads: 4, layers: 2, adapter_layers: 1, num_steps: 6}"]
SMALL = ["blocks.vision.with={channels: [8, 8], keypoints: 8}", "blocks.fuse.with={width: 32}"]


def make_policy(overrides=(), seed=0) -> Policy:
    torch.manual_seed(seed)
    policy = Policy.from_compiled(compile_graph(load_spec("metaworld/mt10", [*SMALL, *overrides]), device="cpu"))
    with torch.no_grad():  # the untrained DiT's adaLN gates are zero: it would ignore its inputs
        for p in policy.cg.model["head"].parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return policy


@pytest.fixture(scope="module")
def flow():
    return make_policy(FLOW)


@pytest.fixture(scope="module")
def mlp():
    return make_policy(["blocks.head.with={hidden: 32, layers: 2, pool: flatten}"])


def obs(t: int = 0) -> dict:
    rng = np.random.default_rng(t)
    return {"images": rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8),
            "state": rng.standard_normal(4).astype(np.float32), "instruction": "push the puck"}


def previous(rows: int = 4, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (rows, 4)).astype(np.float32)


def rtc(delay, remaining=None, **extra) -> dict:
    value = {"delay": delay, **extra}
    if remaining is not None:
        value["remaining_actions"] = remaining
    return {RTC_KEY: value}


# --- the schedule and the blend ---------------------------------------------------------------

def test_guidance_weights_follow_the_papers_schedule():
    w = R.guidance_weights(8, 2, 6, "exp")
    assert w[:2].tolist() == [1.0, 1.0] and w[6:].tolist() == [0.0, 0.0]
    c = (6 - np.arange(2, 6)) / (6 - 2 + 1)
    np.testing.assert_allclose(w[2:6], c * np.expm1(c) / (np.e - 1), rtol=1e-6)
    assert np.all(np.diff(w[1:7]) < 0) and 0 < w[5] < w[2] < 1
    np.testing.assert_allclose(R.guidance_weights(8, 2, 6, "linear")[2:6], c, rtol=1e-6)
    assert R.guidance_weights(8, 2, 6, "hard").tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert R.guidance_weights(8, 2, 6, "ones").tolist() == [1] * 6 + [0, 0]
    assert not R.guidance_weights(8, 0, 0).any()


def test_blend_prefix_is_exact_for_the_delay_then_linear():
    new = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    old = previous(5)
    out = R.blend_prefix(new, old, 2)
    assert np.array_equal(out[:2], old[:2])  # exact replacement
    for i in range(2, 5):
        w = (5 - i) / (5 - 2 + 1)
        np.testing.assert_allclose(out[i], w * old[i] + (1 - w) * new[i], rtol=1e-6)
    assert np.array_equal(out[5:], new[5:])


# --- flow heads: guided sampling ----------------------------------------------------------------

def test_flow_delay_zero_leaves_sampling_unchanged_bitwise(flow):
    plain = flow.infer(obs(), flow.new_session(3))["actions"]
    out = flow.infer({**obs(), **rtc(0, previous())}, flow.new_session(3))
    assert np.array_equal(out["actions"], plain)
    assert out["rtc"] == {"applied": False, "method": "guidance", "delay": 0, "overlap": 4}


@pytest.mark.parametrize("overrides", [FLOW, DUAL], ids=["flow_matching", "dual_system"])
def test_flow_inpaints_the_committed_steps(overrides):
    policy = make_policy(overrides)
    plain = policy.infer(obs(), policy.new_session(3))["actions"]
    old = previous(4)
    for d in (2, 3):
        out = policy.infer({**obs(), **rtc(d, old)}, policy.new_session(3))
        a = out["actions"]
        assert out["rtc"]["applied"] and out["rtc"]["method"] == "guidance"
        err, before = np.abs(a[:d] - old[:d]).mean(), np.abs(plain[:d] - old[:d]).mean()
        assert before > 0.3  # the unguided chunk is far from the previous one...
        assert err < 0.3 * before and err < 0.2, (d, err, before)  # ...the inpainted one is close on the committed steps
        # the soft part of the overlap is pulled towards the old actions too, the rest is left alone
        assert np.abs(a[d:4] - old[d:4]).mean() < np.abs(plain[d:4] - old[d:4]).mean()


def test_guidance_clip_bounds_the_pull(flow):
    old = previous(4)
    errors = []
    for beta in (0.5, 5.0):
        flow.rtc.max_guidance = beta
        a = flow.infer({**obs(), **rtc(3, old)}, flow.new_session(3))["actions"]
        errors.append(float(np.abs(a[:3] - old[:3]).mean()))
    flow.rtc.max_guidance = 5.0
    assert errors[0] > 3 * errors[1], errors  # a tighter clip (smaller beta) pulls less


def test_rows_without_a_request_are_sampled_as_alone(flow):
    alone = flow.infer(obs(1), flow.new_session(5))["actions"]
    both = flow.infer_batch([{**obs(0), **rtc(2, previous())}, obs(1)], sessions=[flow.new_session(3), flow.new_session(5)])
    np.testing.assert_allclose(both[1]["actions"], alone, atol=1e-5)
    assert "rtc" not in both[1] and both[0]["rtc"]["applied"]


def test_session_previous_chunk_stands_in_for_resent_actions(flow):
    a, b = flow.new_session(9), flow.new_session(9)
    first_a = flow.infer(obs(0), a)["actions"]
    first_b = flow.infer(obs(0), b)["actions"]
    assert np.array_equal(first_a, first_b) and np.array_equal(a.previous_actions, first_a)
    via_session = flow.infer({**obs(1), **rtc(2, executed=4)}, a)["actions"]
    resent = flow.infer({**obs(1), **rtc(2, first_b[4:])}, b)["actions"]
    assert np.array_equal(via_session, resent)
    a.reset()
    assert a.previous_actions is None
    out = flow.infer({**obs(1), **rtc(2, executed=4)}, a)  # nothing to continue after a reset: plain sampling
    assert out["rtc"]["applied"] is False


# --- regression heads: prefix replacement + blend -----------------------------------------------

def test_regression_head_prefix_replacement_and_blend(mlp):
    plain = mlp.infer(obs())["actions"]
    old = previous(4)
    out = mlp.infer({**obs(), **rtc(2, old)})
    a = out["actions"]
    assert out["rtc"] == {"applied": True, "method": "blend", "delay": 2, "overlap": 4}
    assert np.array_equal(a[:2], old[:2])
    np.testing.assert_allclose(a[2:4], R.blend_prefix(plain, old, 2)[2:4], rtol=1e-6)
    assert not np.allclose(a[2:4], plain[2:4]) and not np.allclose(a[2:4], old[2:4])
    np.testing.assert_array_equal(a[4:], plain[4:])
    assert np.array_equal(mlp.infer({**obs(), **rtc(0, old)})["actions"], plain)


# --- bad requests ---------------------------------------------------------------------------------

BAD = [
    (rtc(True, previous()), "'__graphvla_rtc__.delay': expected an integer, got bool"),
    (rtc(1.5, previous()), "'__graphvla_rtc__.delay': expected an integer, got float"),
    (rtc("2", previous()), "'__graphvla_rtc__.delay': expected an integer, got str"),
    (rtc(-1, previous()), "'__graphvla_rtc__.delay': -1 is out of range: expected 0..7"),
    (rtc(8, previous(8)), "'__graphvla_rtc__.delay': 8 is out of range: expected 0..7"),
    (rtc(3, previous(2)), "'__graphvla_rtc__.delay': 3 is more than the 2 remaining actions"),
    (rtc(1, previous(4)[:, :3]), "'__graphvla_rtc__.remaining_actions': expected [R, 4] with R <= 8"),
    (rtc(1, previous(9)), "'__graphvla_rtc__.remaining_actions': expected [R, 4] with R <= 8"),
    (rtc(1, previous(4)[0]), "'__graphvla_rtc__.remaining_actions': expected [R, 4]"),
    (rtc(1, np.full((4, 4), np.nan, np.float32)), "'__graphvla_rtc__.remaining_actions': holds NaN"),
    (rtc(1, np.ones((4, 4), dtype=bool)), "'__graphvla_rtc__.remaining_actions': expected numbers"),
    (rtc(1), "send exactly one of 'remaining_actions'"),
    (rtc(1, previous(), executed=2), "send exactly one of 'remaining_actions'"),
    (rtc(1, executed=9), "'__graphvla_rtc__.executed': 9 is out of range: expected 0..8"),
    (rtc(5, executed=4), "'__graphvla_rtc__.delay': 5 is more than the 4 actions left"),
    ({RTC_KEY: {"remaining_actions": previous()}}, "'__graphvla_rtc__.delay': missing"),
    ({RTC_KEY: {"delay": 1, "remaining_actions": previous(), "dealy": 1}}, "unexpected key 'dealy'"),
    ({RTC_KEY: [1, 2]}, "'__graphvla_rtc__': expected a map"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_requests_name_the_key_and_move_no_session(flow, extra, message):
    session = flow.new_session(3)
    state = session.generator.get_state()
    with pytest.raises(R.RTCRequestError) as e:
        flow.infer({**obs(), **extra}, session)
    assert message in str(e.value)
    assert session.steps == 0 and torch.equal(session.generator.get_state(), state)


def test_executed_without_a_session_is_refused(flow):
    with pytest.raises(R.RTCRequestError, match="'__graphvla_rtc__.executed' needs a session"):
        flow.infer({**obs(), **rtc(1, executed=4)})


def test_spec_declares_rtc_per_graph():
    from graphvla.errors import SpecError

    with pytest.raises(SpecError, match=r"infer\.rtc\.max_guidanse: unknown key 'max_guidanse' \(did you mean 'max_guidance'\?\)"):
        load_spec("metaworld/mt10", ["infer.rtc.max_guidanse=3"])
    with pytest.raises(SpecError, match=r"infer\.rtc\.max_guidance"):
        load_spec("metaworld/mt10", ["infer.rtc.max_guidance=0"])
    with pytest.raises(SpecError, match=r"infer\.rtc\.schedule"):
        load_spec("metaworld/mt10", ["infer.rtc.schedule=cubic"])
    policy = make_policy([*FLOW, "infer.rtc={max_delay: 2, schedule: linear, max_guidance: 2.5}"])
    assert policy.metadata["rtc"] == {"enabled": True, "method": "guidance", "max_delay": 2, "schedule": "linear",
                                      "max_guidance": 2.5}
    with pytest.raises(R.RTCRequestError, match="3 is out of range: expected 0..2"):
        policy.infer({**obs(), **rtc(3, previous())})
    off = make_policy([*FLOW, "infer.rtc.enabled=false"])
    with pytest.raises(R.RTCRequestError, match=r"disabled for this graph \(infer\.rtc\.enabled\)"):
        off.infer({**obs(), **rtc(1, previous())})


# --- over the wire ----------------------------------------------------------------------------------

def test_server_answers_rtc_and_survives_bad_requests(flow):
    with ServerThread(flow, ServeOptions(port=0)) as srv:
        with PolicyClient(srv.host, srv.port) as client:
            assert client.metadata["rtc"]["method"] == "guidance"
            first = client.infer(obs(0))["actions"]
            for extra, message in BAD:
                with pytest.raises(ServerError) as e:
                    client.infer({**obs(1), **extra})
                assert message in str(e.value)
            reply = client.infer({**obs(1), **rtc(2, executed=4)})
            assert reply["rtc"]["applied"] and reply["rtc"]["overlap"] == 4
            assert np.abs(reply["actions"][:2] - first[4:6]).mean() < 0.2
        # openpi's own client sends no RTC keys and is served as before
        openpi = WebsocketClientPolicy(srv.host, srv.port)
        assert openpi.infer(obs(0))["actions"].shape == (8, 4)
        assert srv.server.errors == len(BAD)
