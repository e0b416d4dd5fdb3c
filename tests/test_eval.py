"""Closed-loop evaluation: Wilson intervals, and Meta-World driven through the real server by
a policy double that answers with the scripted expert (so success must be high) or with zeros
(so it must be low); the CLI writes results.json and a GIF."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from graphvla.cli import main
from graphvla.client import PolicyClient, load_adapter
from graphvla.runners.eval.runner import evaluate_metaworld
from graphvla.runners.eval.stats import format_table, summarize, wilson_interval
from graphvla.runners.serve import ServeOptions, ServerThread
from graphvla.sim import metaworld as mw
from test_serve_doubles import PolicyDouble

TASK_OF = {v: k for k, v in mw.INSTRUCTIONS.items()}


class ExpertPolicy(PolicyDouble):
    """Image + instruction + full 39-dim state in, the expert's action out."""

    def __init__(self, zero=False, horizon=4):
        super().__init__(horizon, 4, {"images": {"kind": "image", "views": 1, "size": [32, 32]},
                                      "instruction": {"kind": "text"},
                                      "state": {"kind": "state", "dim": 39, "privileged": True}},  # the expert reads it all
                         name="expert-double")
        self.zero = zero
        self.seen_images = []

    def compute(self, obs, session):
        assert obs["images"].shape == (1, 32, 32, 3) and obs["images"].dtype == np.uint8
        self.seen_images.append(float(obs["images"].std()))
        a = np.zeros(4, np.float32) if self.zero else mw.expert_action(TASK_OF[obs["instruction"]], obs["state"])
        return {"actions": np.repeat(a[None], self.horizon, axis=0)}


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4) and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    s = summarize({"a": [True, True, False, True], "b": [False, False, False, False]})
    assert s["tasks"]["a"]["success_rate"] == 0.75 and s["mean"]["success_rate"] == 0.375
    assert s["mean"]["ci95"] == pytest.approx(list(wilson_interval(3, 8)))
    table = format_table(s)
    assert "75.0%" in table and "3/8" in table and table.splitlines()[-1].startswith("mean")


def _evaluate(policy, tmp_path, episodes=2):
    adapter = load_adapter("metaworld", {"actions.execute": 1})
    with ServerThread(policy, ServeOptions(port=0)) as srv, PolicyClient("127.0.0.1", srv.port) as c:
        return evaluate_metaworld(c.infer, c.metadata, adapter, ["reach-v3"], episodes, 1000, tmp_path,
                                  max_steps=150, reset=c.reset, log=lambda m: None)


def test_expert_through_the_server_succeeds(tmp_path):
    policy = ExpertPolicy()
    summary = _evaluate(policy, tmp_path)
    assert summary["tasks"]["reach-v3"]["successes"] == 2
    assert [e["seed"] for e in summary["episodes"]["reach-v3"]] == [1000, 1001]
    assert min(policy.seen_images) > 1.0  # real rendered frames, not blank
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["mean"]["success_rate"] == 1.0 and saved["config"]["graph"] == "expert-double"
    assert (tmp_path / "reach-v3.gif").stat().st_size > 1000


def test_zero_actions_fail(tmp_path):
    summary = _evaluate(ExpertPolicy(zero=True), tmp_path, episodes=1)
    assert summary["tasks"]["reach-v3"]["successes"] == 0
    assert summary["episodes"]["reach-v3"][0]["steps"] == 150


def test_eval_cli_against_a_running_server(tmp_path):
    with ServerThread(ExpertPolicy(), ServeOptions(port=0)) as srv:
        res = CliRunner().invoke(main, ["eval", "--server", srv.url, "--tasks", "reach-v3", "--episodes", "2",
                                        "--execute", "2", "--max-steps", "150", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "reach-v3" in res.output and "100.0%" in res.output and "mean" in res.output
    assert json.loads((tmp_path / "results.json").read_text())["config"]["episodes_per_task"] == 2


def test_eval_cli_adapter_override_ensembles(tmp_path):
    with ServerThread(ExpertPolicy(), ServeOptions(port=0)) as srv:
        res = CliRunner().invoke(main, ["eval", "--server", srv.url, "--tasks", "reach-v3", "--episodes", "1",
                                        "--adapter-set", "actions.ensemble={decay: 0.01}", "--max-steps", "150",
                                        "--no-gif", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["adapter"]["actions"]["ensemble"] == {"decay": 0.01}
    episode = saved["episodes"]["reach-v3"][0]
    assert episode["queries"] == episode["steps"]  # ensembling asks for a chunk every step
    assert not list(tmp_path.glob("*.gif"))


def test_eval_cli_errors_are_clean(tmp_path):
    res = CliRunner().invoke(main, ["eval", "--tasks", "reach-v3"])
    assert res.exit_code != 0 and "RUN folder or --server" in res.output
