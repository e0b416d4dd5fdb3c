"""The spec commands: exit codes, error format without tracebacks, --set, --debug, schema, blocks."""
from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner
from conftest import line_of
from test_spec import BASE

from graphvla.cli import main


CLI = [sys.executable, "-c", "from graphvla.cli import main; main()"]


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_validate_ok(write_spec):
    path = write_spec("ok.yaml", BASE)
    result = run("validate", path)
    assert result.exit_code == 0, result.output
    assert "ok (base, fingerprint " in result.output


def test_validate_reports_every_error_with_location_and_exit_1(write_spec):
    bad = BASE.replace("    with: {hidden: 64}", "    wiht: {hidden: 64}").replace("type: glue.fuse", "type: glue.fus")
    path = write_spec("bad.yaml", bad)
    result = run("validate", path)
    assert result.exit_code == 1
    assert "2 errors in spec:" in result.output
    typo, kind = line_of(bad, "wiht:"), line_of(bad, "glue.fus")
    assert f"{path}:{typo}:5: error: blocks.head.wiht: unknown key 'wiht' (did you mean 'with'?) [block head]" in result.output
    assert f"{path}:{kind}:11: error: blocks.fuse.type: unknown block type 'glue.fus' (did you mean 'glue.fuse'?)" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_set_option_on_validate_and_compile(write_spec):
    path = write_spec("ok.yaml", BASE)
    result = run("validate", path, "--set", "blocks.head.with.hidden=oops")
    assert result.exit_code == 1 and "--set blocks.head.with.hidden=oops: error: blocks.head.with.hidden" in result.output
    result = run("compile", path, "--set", "blocks.head.with.horizon=3")
    assert result.exit_code == 1 and "with.horizon=3 but inputs.actions has horizon 8" in result.output
    result = run("compile", path, "--set", "blocks.fuse.with.width=48")
    assert result.exit_code == 0 and "[B, 5, 48]" in result.output


def test_compile_prints_summary_and_code(write_spec):
    path = write_spec("ok.yaml", BASE)
    result = run("compile", path, "--code")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "fingerprint" in out and "head.mlp" in out and "inputs.actions" in out
    assert "# train graph, stream 'action'" in out and "# inference graph" in out
    # the instruction reaches the graphs as the ids its text step made (the preprocess pipeline)
    assert "def forward(self, images, state, actions, language_ids):" in out
    assert "def forward(self, images, state, language_ids):" in out


def test_warnings_go_to_stderr_and_keep_exit_0(write_spec):
    path = write_spec("ok.yaml", BASE.replace("blocks:\n", "blocks:\n  spare:\n    type: encoder.text\n    in: {text: inputs.instruction}\n"))
    result = run("validate", path)
    assert result.exit_code == 0 and "warning: blocks.spare: block 'spare' feeds no loss" in result.output


def test_missing_file_is_a_clean_error(tmp_path):
    result = run("validate", tmp_path / "nope.yaml")
    assert result.exit_code == 1 and "nope.yaml: error: <root>: file not found" in result.output


def test_debug_shows_the_traceback_and_plain_run_does_not(write_spec):
    path = write_spec("bad.yaml", BASE.replace("type: head.mlp", "type: head.nope"))
    plain = subprocess.run([*CLI, "validate", str(path)], capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and "unknown block type 'head.nope'" in plain.stderr
    debug = subprocess.run([*CLI, "--debug", "validate", str(path)], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "SpecError" in debug.stderr


def test_schema_is_json_with_every_block_type():
    result = run("schema")
    assert result.exit_code == 0
    schema = json.loads(result.output)
    block = schema["properties"]["blocks"]["additionalProperties"]
    assert {"head.mlp", "encoder.image", "encoder.text", "glue.fuse"} <= set(block["properties"]["type"]["enum"])
    mlp = [c["then"] for c in block["allOf"] if c["if"]["properties"]["type"]["const"] == "head.mlp"][0]
    assert "hidden" in mlp["properties"]["with"]["properties"]


def test_blocks_lists_types_and_ports():
    result = run("blocks", "-v")
    assert result.exit_code == 0
    assert "head.mlp" in result.output and "in  context" in result.output and "out loss" in result.output


def test_data_stats_writes_the_printed_json_with_o(tmp_path):
    """`graphvla data stats -o FILE` writes (through data/stats_report.py) exactly what it prints."""
    import numpy as np

    from graphvla.data.lerobot_write import LeRobotWriter

    writer = LeRobotWriter(tmp_path / "ds", fps=10, features={"action": ("float32", (2,))})
    actions = np.arange(20, dtype=np.float32).reshape(10, 2)
    writer.add_episode({"action": actions}, "reach")
    writer.finalize()
    result = run("data", "stats", tmp_path / "ds", "--keys", "action", "-o", tmp_path / "stats.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "stats.json").read_text() == result.output
    assert json.loads(result.output)["action"]["mean"] == [9.0, 10.0]
    missing = run("data", "stats", tmp_path / "ds", "--keys", "nope", "-o", tmp_path / "other.json")
    assert missing.exit_code == 1 and "no numeric key 'nope'" in missing.output and not (tmp_path / "other.json").exists()
