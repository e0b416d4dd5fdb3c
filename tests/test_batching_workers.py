"""Two inference workers (ServeOptions.infer_workers=2): the next batch is collected and computed
while another computes, and every client still gets what its session gets alone. The graph
samples (a flow head draws noise from each session's generator) and caches a block per session
(`infer: {every: 2}`), so a batch that read or moved another batch's session state would show."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from graphvla import compile_graph
from graphvla.client import PolicyClient
from graphvla.policy.policy import Policy
from graphvla.runners.serve import ServeOptions, ServerThread
from train_doubles import tiny_spec

SPEC = tiny_spec(  # a sampling head and a block cached per session
    "blocks.vision.infer={every: 2}", "blocks.head.type=head.flow_matching",
    "blocks.head.with={width: 16, heads: 2, layers: 1, num_steps: 2}")
CLIENTS, STEPS, SEED = 6, 4, 99


class Overlapping:
    """The policy, counting how many batches compute at once. With `overlap` n, the first batches
    wait until n compute together (a signal, not a delay): the test then knows that n batches
    really were in flight at once."""

    def __init__(self, policy, overlap: int = 1):
        self.policy, self.overlap, self.now, self.most = policy, overlap, 0, 0
        self._changed = threading.Condition()

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def infer_batch(self, observations, sessions=None, **options):
        with self._changed:
            self.now += 1
            self.most = max(self.most, self.now)
            self._changed.notify_all()
            assert self._changed.wait_for(lambda: self.most >= self.overlap, 60), "no second batch came"
        try:
            return self.policy.infer_batch(observations, sessions=sessions, **options)
        finally:
            with self._changed:
                self.now -= 1

    def infer(self, obs, session=None, **options):
        return self.infer_batch([obs], None if session is None else [session], **options)[0]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    policy = Policy.from_compiled(compile_graph(SPEC, device="cpu"))
    with torch.no_grad():  # the untrained DiT's zero adaLN gates would make it ignore its context
        for p in policy.cg.model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return policy


def obs(client: int, t: int) -> dict:
    rng = np.random.default_rng(100 * client + t)
    return {"images": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
            "state": rng.standard_normal(4).astype(np.float32), "instruction": f"task {client % 3}"}


def alone(policy, client: int) -> np.ndarray:
    session = policy.new_session(SEED)
    return np.stack([policy.infer(obs(client, t), session=session)["actions"] for t in range(STEPS)])


def serve_clients(wrapped, workers: int) -> dict:
    got, errors = {}, []
    with ServerThread(wrapped, ServeOptions(port=0, seed=SEED, max_batch=3, max_wait_ms=5,
                                            infer_workers=workers)) as srv:
        def work(i):
            try:
                client = PolicyClient("127.0.0.1", srv.port)
                got[i] = np.stack([client.infer(obs(i, t))["actions"] for t in range(STEPS)])
                client.close()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    return got


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_batches_keep_every_session_apart(policy, workers):
    wrapped = Overlapping(policy, overlap=workers)
    got = serve_clients(wrapped, workers)
    assert wrapped.most == workers  # 2: two batches really computed at once
    for i in range(CLIENTS):
        np.testing.assert_allclose(got[i], alone(policy, i), rtol=1e-5, atol=1e-5)
    assert np.abs(got[0] - got[3]).max() > 1e-3  # same instruction, other observations: other actions


def test_bad_worker_count_is_refused(policy):
    with pytest.raises(ValueError, match="inference workers must be >= 1, got 0"):
        ServerThread(policy, ServeOptions(port=0, infer_workers=0))

