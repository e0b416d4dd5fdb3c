"""`graphvla import SOURCE CKPT_DIR`: its help names both sources, and `import lerobot` refuses each
starVLA-only option it is given by name (defaults left alone are not refused), before reading anything
and without writing the run folder. Cheap: no checkpoint is read."""
from __future__ import annotations

from click.testing import CliRunner

from graphvla.cli import main


def test_the_help_names_both_sources():
    out = CliRunner().invoke(main, ["import", "--help"])
    assert out.exit_code == 0, out.output
    assert "`starvla`: a starVLA run folder" in out.output and "`lerobot`: a policy LeRobot's" in out.output
    listed = CliRunner().invoke(main, ["--help"]).output
    assert "import      Import CKPT_DIR, a checkpoint SOURCE's trainer wrote" in listed


def test_import_lerobot_refuses_every_starvla_option_it_is_given(tmp_path):
    missing = str(tmp_path / "no-such-save")
    for args, named in [(["--views", "2"], "--views"), (["--image-size", "64"], "--image-size"),
                        (["--fast-tokenizer", "x"], "--fast-tokenizer"), (["--weights", "w"], "--weights"),
                        (["--dataset-key", "k", "--base-vlm", "b"], "--base-vlm, --dataset-key")]:
        out = CliRunner().invoke(main, ["import", "lerobot", missing, "-o", str(tmp_path / "o"), *args])
        assert out.exit_code == 1, out.output
        assert f"error: {named}: options of `graphvla import starvla`" in out.output, out.output
        assert not (tmp_path / "o").exists()
    # no starVLA option given: the save itself is what is refused (it does not exist)
    out = CliRunner().invoke(main, ["import", "lerobot", missing, "-o", str(tmp_path / "o")])
    assert out.exit_code == 1 and "options of" not in out.output and "not a folder" in out.output, out.output
