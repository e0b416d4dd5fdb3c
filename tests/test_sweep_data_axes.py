"""Data axes of `graphvla sweep`: cells that differ in their recording (image size, demonstrations
per task). The control refuses a recording setting no axis declares, each distinct recording is
made once and shared, and a tiny sweep with a data axis runs end to end (recordings, training,
evaluation, report rebuilt byte for byte)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require_metaworld

from graphvla.cli import main
from graphvla.errors import SpecError
from graphvla.runners.sweep import SweepRefused, check_controls, load_sweep
from graphvla.runners.sweep.data_axes import plan_recordings

HEAD = "blocks.head: {type: head.mlp, in: {context: fuse.pooled, state: inputs.state}, with: {hidden: 16, layers: 1}}"


def write(tmp_path: Path, axes: str, data: str = "{record: {protocol: starvla-mt50, tasks: reach-v3, episodes: 1}}",
          name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(f"""\
        sweep: 1
        base: sweeps/smoke/tiny
        data: {data}
        axes:
        """) + textwrap.indent(textwrap.dedent(axes), "  ") + textwrap.dedent("""\
        seeds: [0]
        trainer: {max_steps: 4, batch_size: 8, warmup_steps: 1, save_every: 2}
        eval: {protocol: starvla-mt50, tasks: reach-v3, episodes: 1}
        """))
    return path


def refusal(path: Path) -> str:
    s = load_sweep(path)
    with pytest.raises(SweepRefused) as e:
        check_controls(s, s.runs())
    return str(e.value)


def test_a_recording_setting_no_axis_declares_is_refused_by_name(tmp_path):
    # the image size changes the recording (it follows the graph's input), which the axis does not declare
    text = refusal(write(tmp_path, """\
        size:
          changes: [inputs.images.size]
          variants:
            px64: {}
            px32: {set: {inputs.images.size: [32, 32]}}
        """))
    assert "cell 'px32' (seed 0)" in text and "data.record.size 32 (the base: 64)" in text
    assert "which its axes do not declare (changes: inputs.images.size)" in text and "px64" not in text
    # demonstrations per task on an axis that declares only the head
    text = refusal(write(tmp_path, """\
        head:
          changes: [blocks.head]
          variants:
            mlp: {}
            more: {set: {data.record.episodes: 2}}
        """))
    assert "cell 'more' (seed 0)" in text and "data.record.episodes 2 (the base: 1)" in text
    # a recording size the cell's graph does not read
    text = refusal(write(tmp_path, """\
        size:
          changes: [data.record.size]
          variants:
            px64: {}
            px32: {set: {data.record.size: 32}}
        """))
    assert "sets data.record.size 32, but its graph's image input is 64x64" in text
    assert "inputs.images.size: [32, 32]" in text


def test_data_settings_are_checked_when_the_sweep_is_read(tmp_path):
    path = write(tmp_path, """\
        size:
          changes: [data.record]
          variants:
            a: {set: {data.record.workers: 2}}
            b: {set: {data.path: x}}
            c: {set: {data.record.episodes: two}}
        own:
          variants:
            same: {}
            d: {set: {trainer.lr: 0.1}}
        """)
    with pytest.raises(SpecError) as e:
        load_sweep(path)
    text = str(e.value)
    assert "'data.record.workers' is not a recording setting an axis may vary" in text
    assert "'data.path': a variant may vary the recording's settings only" in text
    assert "'data.record.episodes': 'two' is not a positive integer" in text
    assert "variant 'd' of axis 'own' declares no `changes:`" in text
    for line in ("8:", "9:", "10:", "14:"):  # each at its line in the sweep file
        assert f"s.yaml:{line}" in text, text
    (tmp_path / "data").mkdir()
    path = write(tmp_path, """\
        demos:
          changes: [data.record.episodes]
          variants:
            one: {}
            two: {set: {data.record.episodes: 2}}
        """, data="data")
    with pytest.raises(SpecError, match="varies the recording, but the sweep trains on the dataset"):
        load_sweep(path)


def test_cells_share_each_distinct_recording(tmp_path):
    # 2 sizes x 2 heads x demonstrations on a variant of its own = 6 cells, 3 recordings
    s = load_sweep(write(tmp_path, f"""\
        size:
          changes: [inputs.images.size, data.record.size]
          variants:
            px64: {{}}
            px32: {{set: {{inputs.images.size: [32, 32], data.record.size: 32}}}}
            demos2: {{set: {{data.record.episodes: 2}}, changes: [data.record.episodes]}}
        head:
          changes: [blocks.head]
          variants:
            keep: {{}}
            small: {{set: {{{HEAD}}}}}
        """))
    runs = s.runs()
    specs = check_controls(s, runs)
    planned, cells = plan_recordings(s, runs, specs)
    assert planned == {"64px-1ep": {"size": 64, "episodes": 1}, "32px-1ep": {"size": 32, "episodes": 1},
                       "64px-2ep": {"size": 64, "episodes": 2}}
    assert cells == {"px64_keep": "64px-1ep", "px64_small": "64px-1ep", "px32_keep": "32px-1ep",
                     "px32_small": "32px-1ep", "demos2_keep": "64px-2ep", "demos2_small": "64px-2ep"}
    assert all("data.record" not in o for r in runs for o in r.sets)  # recording settings are no graph --set
    # a variant's own `changes:` replaces its axis's: demos2 may not change the image size
    bad = write(tmp_path, """\
        size:
          changes: [inputs.images.size, data.record.size]
          variants:
            px64: {}
            demos2: {set: {data.record.episodes: 2, inputs.images.size: [32, 32]}, changes: [data.record.episodes]}
        """, name="bad.yaml")
    text = refusal(bad)
    assert "cell 'demos2' (seed 0) changes inputs.images.size" in text and "data.record.size 32" in text


def test_a_sweep_with_a_data_axis_end_to_end(tmp_path):
    """A cell at another image size and demonstration count: two recordings, each made once and
    trained on by its cell; the report names them and rebuilds byte for byte. The two runs go side
    by side (--workers 2: the recordings are made before either starts), which on two cores takes
    about the time of one; nothing here depends on the order they finish in."""
    require_metaworld()
    path = write(tmp_path, """\
        data:
          changes: [inputs.images.size, data.record]
          variants:
            base: {}
            small: {set: {inputs.images.size: [32, 32], data.record.episodes: 2}}
        """)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sweep", str(path), "-o", str(out), "--workers", "2", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (out / "data").exists()
    assert sorted(p.name for p in (out / "recordings").iterdir()) == ["32px-2ep", "64px-1ep"]
    for name, size, episodes in (("32px-2ep", 32, 2), ("64px-1ep", 64, 1)):
        info = json.loads((out / "recordings" / name / "data" / "meta" / "info.json").read_text())
        assert info["total_episodes"] == episodes
        assert info["features"]["observation.images.corner2"]["shape"][:2] == [size, size]
    for cell, name in (("base", "64px-1ep"), ("small", "32px-2ep")):
        d = out / "cells" / cell / "seed0"
        assert json.loads((d / "run" / "data.json").read_text())["datasets"] == [str(out / "recordings" / name / "data")]
        assert json.loads((d / "cell.json").read_text())["recording"]["label"] == name
        assert f"--data {out / 'recordings' / name / 'data.yaml'}" in (d / "train.log").read_text()
    report = json.loads((out / "results.json").read_text())
    assert {c["cell"]: c["recording"] for c in report["cells"]} == {"base": "64px-1ep", "small": "32px-2ep"}
    assert all(c["complete"] for c in report["cells"])
    md = (out / "results.md").read_text()
    assert "`32px-2ep` (starvla-mt50 reach-v3, 32x32 px, 2 demonstrations per task): small" in md
    assert "- trained on the recording `32px-2ep`" in md
    assert (out / "results.csv").read_text().splitlines()[0].startswith("cell,data,recording,seeds")
    (out / "results.md").unlink()
    again = CliRunner().invoke(main, ["sweep", "--report", str(out)], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert (out / "results.md").read_text() == md


def test_each_recording_is_made_once_and_only_when_a_run_needs_it(tmp_path, monkeypatch):
    """start_output records each distinct recording once (at its graph's size), only those the runs
    to do need, and a sweep whose cells all use one recording that is not the base's still gets it."""
    from graphvla.runners import protocol_data
    from graphvla.runners.sweep.execute import data_of, start_output

    made = []

    def fake_record(out, spec, graph, tasks, episodes, workers, log=print, protocol=protocol_data.PROTOCOL):
        assert protocol == "starvla-mt50"  # the sweep's data.record.protocol
        made.append((Path(out).relative_to(tmp_path).as_posix(), protocol_data.image_size(spec, graph), episodes))
        return Path(out) / "data.yaml"

    monkeypatch.setattr(protocol_data, "record_protocol_data", fake_record)
    s = load_sweep(write(tmp_path, f"""\
        size:
          changes: [inputs.images.size, data.record]
          variants:
            px64: {{}}
            px32: {{set: {{inputs.images.size: [32, 32]}}}}
            demos2: {{set: {{data.record.episodes: 2}}}}
        head:
          changes: [blocks.head]
          variants:
            keep: {{}}
            small: {{set: {{{HEAD}}}}}
        """))
    runs = s.runs()
    specs = check_controls(s, runs)
    todo = [r for r in runs if r.cell in ("px32_keep", "px32_small", "demos2_small")]
    start_output(s, specs[runs[0].key][0], tmp_path / "out", log=lambda m: None, runs=runs, specs=specs, todo=todo)
    assert sorted(made) == [("out/recordings/32px-1ep", 32, 1), ("out/recordings/64px-2ep", 64, 2)]
    assert data_of(s, todo[0], "unused") == str(tmp_path / "out/recordings/32px-1ep/data.yaml")
    saved = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert saved["cell_recording"]["px64_keep"] == "64px-1ep" and saved["recordings"]["64px-1ep"]["settings"] == {
        "protocol": "starvla-mt50", "tasks": "reach-v3", "size": 64, "episodes": 1}
    # one axis whose only variant leaves the base's recording: not the base's folder OUT/data
    made.clear()
    s = load_sweep(write(tmp_path, """\
        size:
          changes: [inputs.images.size, data.record.size]
          variants:
            px32: {set: {inputs.images.size: [32, 32]}}
        """, name="one.yaml"))
    runs = s.runs()
    specs = check_controls(s, runs)
    start_output(s, specs[runs[0].key][0], tmp_path / "one", log=lambda m: None, runs=runs, specs=specs)
    assert made == [("one/recordings/32px-1ep", 32, 1)]
