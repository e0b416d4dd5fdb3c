"""The server in front of the real graphvla Policy (tiny graph, CPU): the actions that come
over the wire equal Policy.infer on the same observation, batched or not."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from graphvla import compile_graph
from graphvla.policy.policy import Policy
from graphvla.runners.serve import ServeOptions, ServerThread

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

KEY_MAP = {"observation/image": "images[0]", "observation/state": "state", "prompt": "instruction"}


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    cg = compile_graph("graphvla/graphs/tiny/mlp.yaml", device="cpu")
    return Policy.from_compiled(cg)


def obs(seed):
    rng = np.random.default_rng(seed)
    return {"observation/image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "observation/state": rng.standard_normal(8).astype(np.float32), "prompt": f"task number {seed}"}


def ports(o):
    return {"images": o["observation/image"], "state": o["observation/state"], "instruction": o["prompt"]}


def test_wire_actions_equal_direct_inference(policy):
    with ServerThread(policy, ServeOptions(port=0, key_map=KEY_MAP)) as srv:
        c = WebsocketClientPolicy("127.0.0.1", srv.port)
        meta = c.get_server_metadata()
        assert meta["name"] == "tiny-mlp" and meta["action_horizon"] == 8 and meta["action_dim"] == 4
        assert meta["observation_keys"] == list(KEY_MAP)
        for seed in range(3):
            got = c.infer(obs(seed))["actions"]
            np.testing.assert_allclose(got, policy.infer(ports(obs(seed)))["actions"], rtol=1e-5, atol=1e-6)
        with pytest.raises(RuntimeError, match="observation/image"):
            c.infer({**obs(0), "observation/image": np.zeros((32, 32, 3), np.uint8)})


def test_batched_requests_equal_one_by_one(policy):
    results = {}
    with ServerThread(policy, ServeOptions(port=0, key_map=KEY_MAP, max_wait_ms=100)) as srv:
        clients = [WebsocketClientPolicy("127.0.0.1", srv.port) for _ in range(4)]
        barrier = threading.Barrier(4)

        def work(i):
            barrier.wait()
            results[i] = clients[i].infer(obs(10 + i))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert max(r["server_timing"]["batch_size"] for r in results.values()) > 1
    for i, r in results.items():
        np.testing.assert_allclose(r["actions"], policy.infer(ports(obs(10 + i)))["actions"], rtol=1e-4, atol=1e-5)


def test_serve_section_from_checkpoint_and_command_line(tmp_path):
    import click

    import graphvla.cli  # noqa: F401  (command modules are imported through the CLI)
    from graphvla.commands.serve_cmds import serve_section

    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "spec.yaml").write_text("name: x\nserve:\n  key_map: {cam: 'images[0]'}\n  max_batch: 4\n")
    section = serve_section(str(tmp_path), ["serve.max_wait_ms=5", "serve.key_map.prompt=instruction"],
                            ["observation/state=state", "junk="])
    assert section["key_map"] == {"cam": "images[0]", "prompt": "instruction", "observation/state": "state", "junk": None}
    assert section["max_batch"] == 4 and section["max_wait_ms"] == 5 and section["max_message_mb"] == 64
    with pytest.raises(click.ClickException, match="serve.max_bach: unknown key"):
        serve_section(str(tmp_path), ["serve.max_bach=2"], [])
    with pytest.raises(click.ClickException, match="only serve"):
        serve_section(str(tmp_path), ["trainer.lr=2"], [])


def test_bad_key_map_is_refused_with_the_port_names(policy):
    from graphvla.runners.serve import PolicyServer

    with pytest.raises(ValueError, match=r"serve.key_map.cam: 'imgs\[0\]' is not an input port \(ports: images"):
        PolicyServer(policy, ServeOptions(key_map={"cam": "imgs[0]"}))
    with pytest.raises(ValueError, match="has 1 views"):
        PolicyServer(policy, ServeOptions(key_map={"cam": "images[1]"}))
    with pytest.raises(ValueError, match="'state' has no views"):
        PolicyServer(policy, ServeOptions(key_map={"s": "state[0]"}))
    with pytest.raises(ValueError, match="port 'state' is fed by several keys \\(a, b\\)"):
        PolicyServer(policy, ServeOptions(key_map={"a": "state", "b": "state"}))



def test_a_reset_request_starts_a_new_episode_in_the_policy():
    """With the image encoder cached for 4 calls, the second observation is answered from the first
    one's image features; a reset through the wire makes the next answer see the new image."""
    from graphvla.client import PolicyClient

    torch.manual_seed(0)
    cached = Policy.from_compiled(compile_graph("tiny/mlp", ["blocks.vision.infer={every: 4}"], device="cpu"))
    fresh = Policy.from_compiled(compile_graph("tiny/mlp", device="cpu"))
    fresh.cg.model.load_state_dict(cached.cg.model.state_dict())
    expected = fresh.infer(ports(obs(2)))["actions"]
    with ServerThread(cached, ServeOptions(port=0, key_map=KEY_MAP)) as srv, PolicyClient("127.0.0.1", srv.port) as c:
        c.infer(obs(1))
        stale = c.infer(obs(2))["actions"]
        c.reset()
        renewed = c.infer(obs(2))["actions"]
    assert not np.allclose(stale, expected, atol=1e-5)
    np.testing.assert_allclose(renewed, expected, rtol=1e-5, atol=1e-5)
