"""bench/gpu_throughput.py on the CPU with the tiny config (2 timed steps): the script a GPU session
runs, exercised end to end here so it is known to work. Its figures mean nothing on a CPU; the test
checks what it measured and wrote: both heads, both checkpointing settings, the anchor."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import gpu_throughput  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-throughput")
    # a budget no loaded machine reaches: the budget's own cuts are tested below
    result = gpu_throughput.main(["--device", "cpu", "--config", "tiny", "--steps", "2", "--warmup", "1",
                                  "--budget", "36000", "--out", str(out)])
    return result, out


def test_both_heads_and_both_checkpointing_settings_are_measured(measured):
    result, _ = measured
    assert result["config"] == "tiny" and result["device"] == "cpu" and result["batch"] == 8
    rows = {(r["head"], r["gradient_checkpointing"]): r for r in result["results"]}
    assert set(rows) == {("gr00t", False), ("gr00t", True), ("oft", False), ("oft", True)}
    for (head, checkpointing), r in rows.items():
        assert r["graph"] == {"gr00t": "starvla/qwen3vl-gr00t", "oft": "starvla/qwen3vl-oft"}[head]
        assert r["status"] == "ok" and r["steps_timed"] == 2 and r["warmup"] == 1
        # the block option reached the Hugging Face model
        assert r["checkpointing_active"] is checkpointing
        assert r["step_s"] > 0 and math.isclose(r["samples_per_s"], 8 / r["step_s"], rel_tol=1e-2)
        assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
        assert "peak_memory_gib" in r and r["peak_memory_gib"] is None  # CUDA's counter only; CPU: none
        assert r["precision"].startswith("bf16")
    # the same tiny VLM under both heads; QwenOFT's prompt carries its 8 placeholders and their sentence
    assert rows[("gr00t", False)]["vlm_parameters"] == rows[("oft", False)]["vlm_parameters"] > 0
    assert rows[("oft", False)]["tokens_per_sample"] > rows[("gr00t", False)]["tokens_per_sample"] + 8
    assert result["stopped_early"] is False
    assert result["anchor"]["samples_per_s_per_gpu"] == 7.1 and result["anchor"]["samples_per_s_total"] == 56.6


def test_the_json_and_the_table_are_written(measured):
    result, out = measured
    assert json.loads((out / "gpu_throughput.json").read_text()) == json.loads(json.dumps(result))
    table = (out / "gpu_throughput.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| starvla/")]
    assert len(lines) == 4
    assert all(line.endswith("| 7.1 (8 x A100 80GB) |") for line in lines if "gr00t" in line)
    assert all(line.endswith("| - |") for line in lines if "oft" in line)


def test_the_time_budget_stops_the_run_and_says_so(tmp_path):
    result = gpu_throughput.main(["--device", "cpu", "--config", "tiny", "--budget", "0", "--out", str(tmp_path)])
    assert [r["status"] for r in result["results"]] == ["skipped (time budget)"] * 4
    assert result["stopped_early"] is True
    assert "Stopped early by the time budget" in (tmp_path / "gpu_throughput.md").read_text()


def test_bad_options_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--processor .*no tokenizer_config.json"):
        gpu_throughput.main(["--device", "cpu", "--processor", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: no CUDA device"):
            gpu_throughput.main(["--device", "cuda", "--config", "tiny"])
