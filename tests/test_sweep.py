"""`graphvla sweep`: the smoke sweep end to end, resume after an interruption, the control that
refuses a cell changing more than its axis, the report rebuilt byte for byte, and the statistics
on constructed counts."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require_metaworld

from graphvla.cli import main
from graphvla.runners.eval.stats import holm_adjust, mcnemar_exact
from graphvla.runners.sweep import load_sweep
from graphvla.runners.sweep.config import Sweep
from graphvla.runners.sweep.control import change_path, uncontrolled
from graphvla.runners.sweep.execute import load_run_spec, run_dir, train_command
from graphvla.runners.sweep.report import _compare, format_markdown


def sweep(*args) -> object:
    result = CliRunner().invoke(main, ["sweep", *map(str, args)], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The smoke sweep, run once without interruption (it records its own data)."""
    require_metaworld()
    out = tmp_path_factory.mktemp("sweep") / "smoke"
    result = sweep("smoke", "-o", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_smoke_sweep_reports_every_cell_with_intervals_and_plots(finished):
    report = results(finished)
    cells = {c["cell"]: c for c in report["cells"]}
    assert list(cells) == ["mlp", "querytf"]
    for c in cells.values():
        assert c["complete"] and c["pooled"]["episodes"] == 1
        lo, hi = c["pooled"]["ci95"]
        assert 0.0 <= lo <= c["pooled"]["rate"] <= hi <= 1.0
        assert c["params_total"] > 0 and c["params_trainable"] == c["params_total"]
        assert c["final_losses"]["loss/action"]["mean"] > 0
        run = c["runs"][0]
        assert run["fingerprint"] and "head" in run["diff"] or c["cell"] == "mlp"
    assert cells["querytf"]["params_total"] != cells["mlp"]["params_total"]  # the head really changed
    assert "no differences (same fingerprint)" in cells["mlp"]["runs"][0]["diff"]
    assert "head.mlp -> head.query_transformer" in cells["querytf"]["runs"][0]["diff"]
    csv_rows = (finished / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and csv_rows[0].startswith("cell,head,seeds,params_total")
    for stem in ("success", "buckets", "losses"):
        png, svg = finished / f"{stem}.png", finished / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
        assert b"<svg" in svg.read_bytes()[:500]
    md = (finished / "results.md").read_text()
    assert "| mlp | mlp |" in md and "| querytf | querytf |" in md and "graphvla train" in md
    # rerun commands name the packaged graph, not this checkout's path to it
    assert "graphvla train sweeps/smoke/tiny --data" in md and "graphvla/graphs/" not in md
    # each stage ran the runner functions in a child process; its log starts with the equivalent command
    cell = finished / "cells" / "querytf" / "seed0"
    train_log, eval_log = (cell / "train.log").read_text(), (cell / "eval.log").read_text()
    assert train_log.startswith("$ graphvla train ") and "trained " in train_log and "; checkpoint " in train_log
    assert eval_log.startswith("$ graphvla eval ") and "reach-v3: " in eval_log
    assert json.loads((cell / "run" / "data.json").read_text())["datasets"] == [str(finished / "data")]


def test_report_rebuilds_the_same_markdown(finished, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy, ignore=shutil.ignore_patterns("data"))
    before = (copy / "results.md").read_bytes()
    (copy / "results.md").unlink()
    result = sweep("--report", copy)
    assert result.exit_code == 0, result.output
    assert (copy / "results.md").read_bytes() == before


REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted((REPO / "docs" / "results" / "sweeps").glob("*/results.json"))


@pytest.mark.parametrize("results", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_reports_rebuild_byte_for_byte_from_their_results(results):
    """The README's sweep tables come from these reports: the report code must still write them
    exactly from the recorded results (label corrections are data in results.json)."""
    from graphvla.runners.sweep.report import format_csv

    report = json.loads(results.read_text())
    assert format_markdown(report) == (results.parent / "results.md").read_text()
    assert format_csv(report) == (results.parent / "results.csv").read_text()


def test_corrections_relabel_without_touching_the_recorded_figures():
    report = json.loads((REPO / "docs/results/sweeps/heads-mt10/results.json").read_text())
    plain = format_markdown({k: v for k, v in report.items() if k != "corrections"})
    fixed = format_markdown(report)
    assert "| oft | oft |" in plain and "| oft | query_transformer |" in fixed
    assert "### `oft` (head.query_transformer)" in fixed and "Labels corrected" in fixed
    numbers = [line.split("|")[3:] for line in plain.splitlines() if line.startswith("| oft |")]
    assert numbers == [line.split("|")[3:] for line in fixed.splitlines() if line.startswith("| oft |")]


def test_a_held_run_is_left_to_its_process_and_an_interrupted_sweep_resumes_to_the_same_results(finished, tmp_path):
    """Two stories on one output folder, sharing their first session (it used to be trained twice,
    once per test):

    Several `graphvla sweep` processes may share one output folder (--only, --seed): a run held
    by one is refused by the others, which run the rest, never trained or evaluated twice at once.
    The first session finds querytf held by another process: it runs mlp only.

    An interrupted sweep resumes to the same results: querytf's training is then interrupted half
    way (as a killed job leaves it: a checkpoint, no eval), and the next session resumes it (not
    restarting it), leaves the finished mlp run alone, and ends with the uninterrupted sweep's
    results. (`--only` choosing the runs is checked in test_only_and_seed_choose_the_runs.)"""
    from filelock import FileLock

    from graphvla.runners.sweep.execute import RUN_LOCK

    out = tmp_path / "resumed"
    data = finished / "data.yaml"
    s = load_sweep("smoke", str(data))
    querytf = next(r for r in s.runs() if r.cell == "querytf")
    d = run_dir(out, querytf)
    d.mkdir(parents=True)
    # first session: another process holds querytf
    with FileLock(d / RUN_LOCK):
        result = sweep("smoke", "-o", out, "--data", data, "--seed", "0", "--no-progress")
    assert result.exit_code != 0
    assert "querytf/seed0: another `graphvla sweep` process is running it" in result.output
    assert not (d / "run").exists() and not (d / "state.json").exists()  # nothing done to the held run
    assert json.loads((out / "cells/mlp/seed0/state.json").read_text())["finished"]  # the other run ran
    mlp_state = (out / "cells/mlp/seed0/state.json").read_text()
    # the other cell's training is interrupted half way (as a killed job leaves it: a checkpoint, no eval)
    args = train_command(querytf, str(data), d / "run") + ["--stop-after", "2"]
    subprocess.run([sys.executable, "-m", "graphvla", *args], check=True, capture_output=True)
    result = sweep("smoke", "-o", out, "--data", data, "--no-progress")
    assert result.exit_code == 0, result.output
    assert (out / "cells/mlp/seed0/state.json").read_text() == mlp_state  # finished: not redone
    sessions = json.loads((d / "state.json").read_text())["train_sessions"]
    assert [(x["from_step"], x["to_step"]) for x in sessions] == [(2, 4)]  # resumed, not restarted
    a, b = results(finished), results(out)
    for ca, cb in zip(a["cells"], b["cells"]):
        assert ca["cell"] == cb["cell"] and ca["pooled"] == cb["pooled"] and ca["buckets"] == cb["buckets"]
        ra, rb = ca["runs"][0], cb["runs"][0]
        assert ra["fingerprint"] == rb["fingerprint"]
        assert ra["final_losses"] == pytest.approx(rb["final_losses"], rel=1e-6)
    la = json.loads((run_dir(finished, querytf) / "state.json").read_text())["losses"]["loss/action"]
    lb = json.loads((d / "state.json").read_text())["losses"]["loss/action"]
    assert [s for s, _ in la] == [s for s, _ in lb]
    assert [v for _, v in la] == pytest.approx([v for _, v in lb], rel=1e-6)


def test_only_and_seed_choose_the_runs(tmp_path, monkeypatch):
    """`--only CELL` runs that cell's runs and no other (with `--seed N`: those at seed N); the runs
    themselves are stubbed here (the first session of the resume test above runs one for real)."""
    from graphvla.runners.sweep import execute

    ran = []

    def run_once(sweep_, run, specs_, data, out, threads=None):
        ran.append(run.key)
        return {}

    monkeypatch.setattr(execute, "execute_run", run_once)
    sweep("smoke", "-o", tmp_path / "only", "--data", tmp_path, "--only", "mlp", "--no-progress")
    assert ran == [r.key for r in load_sweep("smoke", str(tmp_path)).runs() if r.cell == "mlp"] and ran
    ran.clear()
    sweep("smoke", "-o", tmp_path / "both", "--data", tmp_path, "--only", "querytf", "--seed", "0", "--no-progress")
    assert ran == [r.key for r in load_sweep("smoke", str(tmp_path)).runs() if r.cell == "querytf" and r.seed == 0]
    assert ran


def _write_sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_variant_changing_more_than_its_axis_is_refused_with_its_diff(tmp_path):
    path = _write_sweep(tmp_path, """\
        base: sweeps/smoke/tiny
        data: {record: {protocol: starvla-mt50, tasks: reach-v3, episodes: 1}}
        axes:
          head:
            changes: [blocks.head]
            variants:
              mlp: {}
              wider:
                set: {blocks.head.with.hidden: 64, blocks.vision.with.keypoints: 4}
        eval: {protocol: starvla-mt50, tasks: reach-v3, episodes: 1}
        """)
    result = sweep(path, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "not controlled; nothing was trained" in result.output
    assert "changes blocks.vision.with.keypoints" in result.output
    assert "~ vision: with.keypoints 8 -> 4" in result.output  # the offending diff, printed
    assert not (tmp_path / "out" / "cells").exists()


def test_sweep_file_errors_all_at_once_with_locations(tmp_path):
    path = _write_sweep(tmp_path, """\
        base: metaworld/mt10
        data: nowhere.yaml
        seed: [0]
        axes:
          head:
            changes: [blocks.head]
            variants:
              mlp: {sett: {}}
        trainer: {max_stepz: 3}
        eval: {protocol: starvla-mt50, tasks: no-such-task, episodes: 1}
        """)
    result = sweep(path, "--check")
    assert result.exit_code == 1
    out = result.output
    assert f"{path}:3:1: error: seed: unknown key 'seed' (did you mean 'seeds'?)" in out
    assert f"{path}:8:13: error: axes.head.variants.mlp.sett: unknown key 'sett' (did you mean 'set'?)" in out
    # the file's shape is fixed first; then what it names
    path.write_text(path.read_text().replace("seed: [0]\n", "").replace("sett", "set"))
    out = sweep(path, "--check").output
    assert "data: data 'nowhere.yaml' not found" in out and "eval.tasks" in out and "no-such-task" in out
    path.write_text(path.read_text().replace("nowhere.yaml", "s.yaml").replace("no-such-task", "reach-v3"))
    out = sweep(path, "--check").output
    assert f"{path}:8:22: error: trainer.max_stepz: unknown key 'max_stepz' (did you mean 'max_steps'?)" in out


PACKAGED_SWEEPS = sorted(p.stem for p in (REPO / "graphvla" / "graphs" / "sweeps").glob("*.yaml")
                         if "record:" in p.read_text())


@pytest.mark.parametrize("name", PACKAGED_SWEEPS)
def test_packaged_sweeps_that_record_their_data_validate_and_hold_their_controls(name):
    """A packaged sweep is a published experiment: it must keep loading as the graphs under it
    change, and every one of its cells must still change only what its axes declare."""
    result = sweep(name, "--check")
    assert result.exit_code == 0, result.output
    assert "controls hold" in result.output


def test_change_paths_name_what_a_diff_touches():
    s = load_sweep("smoke")
    base = load_run_spec(s, s.base, s.base_overrides(0))
    from graphvla.spec.loader import load_spec

    cell = load_spec(s.base, [o.text for o in s.base_overrides(0)] + [
        "blocks.vision.with.keypoints=4", "losses.action.weight=2", "trainer.lr=0.1"])
    paths = sorted(change_path(r) for r in uncontrolled(base, cell, ["blocks.head"]))
    assert paths == ["blocks.vision.with.keypoints", "losses.action.weight", "trainer.lr"]
    assert uncontrolled(base, cell, ["blocks.vision", "losses", "trainer.lr"]) == []


def test_exact_mcnemar_and_holm_on_known_counts():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857421875)
    assert mcnemar_exact(3, 3) == 1.0
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def _cell(name: str, outcomes: list[bool]) -> dict:
    eps = {f"t/{i}": w for i, w in enumerate(outcomes)}
    s = sum(outcomes)
    return {"cell": name, "runs": [{"seed": 0, "finished": True, "outcomes": eps}],
            "pooled": {"rate": s / len(outcomes), "successes": s, "episodes": len(outcomes)}}


def test_the_report_calls_a_difference_only_when_the_paired_test_holds():
    best = [True] * 30 + [False] * 10
    clearly_worse = [True] * 8 + [False] * 32  # 22 episodes only the best won, 0 the other way
    barely_worse = [True] * 28 + [False] * 12  # 2 discordant pairs: no evidence
    comp = _compare({"a": _cell("a", best), "b": _cell("b", clearly_worse), "c": _cell("c", barely_worse)})
    rows = {r["cell"]: r for r in comp["rows"]}
    assert comp["best"] == "a"
    assert (rows["b"]["only_best"], rows["b"]["only_other"]) == (22, 0) and rows["b"]["significant"]
    assert (rows["c"]["only_best"], rows["c"]["only_other"]) == (2, 0) and not rows["c"]["significant"]
    assert rows["b"]["p_holm"] == pytest.approx(min(1.0, 2 * mcnemar_exact(22, 0)))
    md = format_markdown({"sweep": "x", "description": "", "base": "g", "axes": {}, "seeds": [0], "trainer": {},
                          "eval": {"protocol": "starvla-mt50", "episodes": 1}, "cells": [], "comparisons": comp})
    assert "| b | 40 | 22 | 0 |" in md and "a higher, significant at 95%" in md
    assert "| c | 40 | 2 | 0 | 0.5000 | 0.5000 | no significant difference at 95% |" in md


def test_a_reference_cell_is_compared_with_every_other_in_both_directions():
    """A one-factor sweep names its recipe as `reference:`; a cell may then beat it or lose to it,
    and the report says which, where a best-cell comparison can only go one way."""
    recipe = [True] * 20 + [False] * 20
    better = [True] * 40  # 20 episodes only it won
    worse = [False] * 40  # 20 episodes only the recipe won
    comp = _compare({"recipe": _cell("recipe", recipe), "better": _cell("better", better),
                     "worse": _cell("worse", worse)}, reference="recipe")
    rows = {r["cell"]: r for r in comp["rows"]}
    assert comp["reference"] == "recipe" and "best" not in comp and set(rows) == {"better", "worse"}
    assert (rows["better"]["only_reference"], rows["better"]["only_other"]) == (0, 20)
    assert (rows["worse"]["only_reference"], rows["worse"]["only_other"]) == (20, 0)
    assert rows["better"]["significant"] and rows["worse"]["significant"]
    md = format_markdown({"sweep": "x", "description": "", "base": "g", "axes": {}, "seeds": [0], "trainer": {},
                          "eval": {"protocol": "starvla-mt50", "episodes": 1}, "cells": [], "comparisons": comp})
    assert "## Against the sweep's reference cell, `recipe`" in md
    assert "| better | 40 | 0 | 20 |" in md and "better higher, significant at 95%" in md
    assert "| worse | 40 | 20 | 0 |" in md and "recipe higher, significant at 95%" in md
    # a reference with no finished runs yet compares nothing rather than picking another anchor
    assert _compare({"better": _cell("better", better), "worse": _cell("worse", worse)},
                    reference="recipe") == {"reference": "recipe", "rows": []}


def test_a_reference_that_is_not_a_cell_is_refused_by_name(tmp_path):
    path = _write_sweep(tmp_path, """\
        base: sweeps/smoke/tiny
        data: {record: {protocol: starvla-mt50, tasks: reach-v3, episodes: 1}}
        reference: recipee
        axes:
          head:
            changes: [blocks.head]
            variants:
              recipe: {}
              wider: {set: {blocks.head.with.hidden: 64}}
        eval: {protocol: starvla-mt50, tasks: reach-v3, episodes: 1}
        """)
    out = sweep(path, "--check").output
    assert "reference: reference 'recipee' is not a cell of this sweep" in out and "did you mean 'recipe'?" in out
    path.write_text(path.read_text().replace("recipee", "recipe"))
    result = sweep(path, "--check")
    assert result.exit_code == 0, result.output
    assert load_sweep(path).reference == "recipe"
    assert Sweep.from_dict(load_sweep(path).to_dict()).reference == "recipe"  # kept in OUT/sweep.json


def test_every_cell_is_described_before_any_run_starts(tmp_path, monkeypatch):
    """Describing a cell compiles its graph; done from the run threads, two first imports of
    transformers' lazy modules raced ("cannot import name ...") and killed a sweep. All cell.json
    files are written in one thread before the first run starts."""
    from graphvla.runners.sweep import check_controls, execute

    s = load_sweep("smoke", data_override=str(tmp_path))
    runs = s.runs()
    specs = check_controls(s, runs)
    seen = []

    def run_once(sweep_, run, specs_, data, out, threads=None):
        seen.append(all((run_dir(out, r) / "cell.json").is_file() for r in runs))
        return {}

    monkeypatch.setattr(execute, "execute_run", run_once)
    assert execute.execute_sweep(s, runs, specs, str(tmp_path), tmp_path / "out", workers=2, progress=False) == []
    assert seen == [True] * len(runs)


def test_a_seed_not_in_the_sweep_is_refused_by_name():
    result = CliRunner().invoke(main, ["sweep", "smoke", "-o", "unused", "--seed", "3"])
    assert result.exit_code != 0
    assert "--seed 3" in result.output and "smoke.yaml trains seeds 0" in result.output


def test_runs_share_the_cores_and_honour_a_smaller_omp_num_threads(monkeypatch):
    from graphvla.runners.sweep.execute import threads_per_run

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads_per_run(w) for w in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_run(1) == 1 and threads_per_run(2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert threads_per_run(1) == 6 and threads_per_run(2) == 4  # never more than the share
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert threads_per_run(2) == 4
