"""graphvla's own sync and async clients against the server (and the same wire as openpi)."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
from openpi_client import msgpack_numpy

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_doubles import DoublePolicy, expected_actions  # noqa: E402

from graphvla.client import AsyncPolicyClient, PolicyClient, ServerError  # noqa: E402
from graphvla.runners.serve import ServeOptions, ServerThread  # noqa: E402
from graphvla.protocol import WireError, packb, unpackb  # noqa: E402


def port_obs(seed=0):
    rng = np.random.default_rng(seed)
    return {"images": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), "instruction": "open the drawer",
            "state": rng.standard_normal(8).astype(np.float32)}


@pytest.fixture(scope="module")
def server():
    with ServerThread(DoublePolicy(), ServeOptions(port=0, api_key="k")) as srv:
        yield srv


def test_sync_client(server):
    with PolicyClient("127.0.0.1", server.port, api_key="k") as c:
        assert c.metadata["action_horizon"] == 4
        for seed in range(2):
            np.testing.assert_array_equal(c.infer(port_obs(seed))["actions"], expected_actions(port_obs(seed)))
        with pytest.raises(ServerError, match="missing key 'state'"):
            c.infer({k: v for k, v in port_obs().items() if k != "state"})
        np.testing.assert_array_equal(c.infer(port_obs(3))["actions"], expected_actions(port_obs(3)))


def test_sync_client_url_form(server):
    with PolicyClient(server.url, None, api_key="k") as c:
        assert c.get_server_metadata()["name"] == "double"


def test_async_client_concurrent_requests(server):
    async def main():
        clients = [await AsyncPolicyClient.connect("127.0.0.1", server.port, api_key="k") for _ in range(4)]
        try:
            outs = await asyncio.gather(*(c.infer(port_obs(i)) for i, c in enumerate(clients)))
            with pytest.raises(ServerError, match="unexpected key 'bogus'"):
                await clients[0].infer({**port_obs(), "bogus": 1})
            return outs
        finally:
            for c in clients:
                await c.close()

    outs = asyncio.run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["actions"], expected_actions(port_obs(i)))


def test_wire_is_interchangeable_with_openpi():
    obs = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.float32(1.5), "c": "text",
           "d": {"e": np.ones((2, 2), np.bool_)}, "f": np.zeros((0, 3), np.float64),
           "g": np.array(True), "h": np.arange(12, dtype=np.float32).reshape(3, 4).T}  # 0-d; not C-contiguous
    for encoded in (packb(obs), msgpack_numpy.packb(obs)):
        for decode in (unpackb, msgpack_numpy.unpackb):
            back = decode(encoded)
            for k in ("a", "f", "g", "h"):
                assert back[k].dtype == obs[k].dtype and back[k].shape == obs[k].shape
                np.testing.assert_array_equal(back[k], obs[k])
            np.testing.assert_array_equal(back["d"]["e"], obs["d"]["e"])
            assert back["b"] == np.float32(1.5) and back["c"] == "text"


def test_wire_refuses_what_could_need_pickle():
    with pytest.raises(TypeError):
        packb({"x": np.array([object()], dtype=object)})
    with pytest.raises(WireError, match="not allowed"):
        unpackb(msgpack_numpy.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<U3", b"shape": [0]}}))
    with pytest.raises(WireError, match="shape"):
        unpackb(msgpack_numpy.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}}))
