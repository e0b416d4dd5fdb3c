"""The eval stage (what a sweep's cells and the quickstart run in a child process) evaluates on the
protocol it is given, with that protocol's task selection, not on starvla-mt50 whatever it is given.
Cheap: the episodes themselves are replaced by a recorder of what they were asked."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("protocol", ["lerobot-metaworld", "starvla-mt50"])
def test_the_eval_stage_evaluates_on_the_protocol_it_is_given(tmp_path, monkeypatch, protocol):
    from graphvla.runners import stages
    from graphvla.runners.eval import evaluate
    from graphvla.runners.eval import protocol as eval_protocol
    from graphvla.sim import protocol_module

    asked = {}

    def fake_evaluate(run, tasks, episodes, workers, out_dir, **kwargs):
        asked.update(run=run, tasks=tasks, episodes=episodes, protocol=kwargs.get("protocol", "(default)"))
        return {"config": {}}

    monkeypatch.setattr(evaluate, "evaluate_run_protocol", fake_evaluate)
    monkeypatch.setattr(eval_protocol, "format_protocol_table", lambda summary, label: "table")
    said = []
    stages.eval_stage("RUN", tmp_path / "eval", protocol, 2, 1, tasks="reach-v3,push-v3", buckets=None,
                      note=lambda m: None, say=said.append)
    assert asked == {"run": "RUN", "tasks": protocol_module(protocol).select([], ["reach-v3", "push-v3"]),
                     "episodes": 2, "protocol": protocol}
    assert said[0] == "table"
    with pytest.raises(ValueError, match="protocol nope: unknown"):
        stages.eval_stage("RUN", tmp_path / "eval", "nope", 2, 1, note=lambda m: None, say=said.append)
