"""`graphvla quickstart` end to end at a tiny scale: record, train, serve, evaluate."""
import json
import subprocess
import sys

import pytest
from conftest import require_metaworld


@pytest.mark.slow
def test_quickstart_records_trains_serves_and_evaluates(tmp_path):
    """One demonstration and one evaluation episode: the assertions ask that each stage ran and
    the second run continued, not for a success rate (two of each cost two more 400-step episodes)."""
    require_metaworld()
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "graphvla", "quickstart", "-o", str(out), "--tasks", "reach-v3",
           "--episodes", "1", "--steps", "20", "--eval-episodes", "1", "--workers", "1",
           "--set", "trainer.batch_size=16", "--set", "inputs.images.size=[32, 32]"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # each stage is shown as the command a user would type
    for stage in ("graphvla data metaworld", "graphvla train", "graphvla eval"):
        assert stage in run.stderr
    assert (out / "data" / "meta" / "info.json").exists()
    assert (out / "run" / "checkpoints" / "latest").exists()
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["config"]["protocol"] == "starvla-mt50" and list(results["tasks"]) == ["reach-v3"]
    assert results["episodes_from_training_scenes"] == 0  # found through RUN/data.json
    assert "starVLA LA-pretrained finetune" in run.stdout

    # running it again continues: recording is skipped and training resumes at its last step
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "graphvla data metaworld" not in again.stderr
    assert "--resume" in again.stderr
