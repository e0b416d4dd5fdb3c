"""`graphvla import lerobot` as the LeRobot policy tests call it, and the refusal check they share."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def import_cli(src: Path, out: Path):
    from click.testing import CliRunner

    from graphvla.cli import main

    return CliRunner().invoke(main, ["import", "lerobot", str(src), "-o", str(out)])


def refused(saved_policy: Path, tmp_path: Path, edit, match: str, files=None):
    """A copy of `saved_policy` under `tmp_path`, its config.json changed by `edit` (and its folder by
    `files`), is refused by the import naming `match`, leaving no run folder and no temporary one."""
    src = tmp_path / f"src-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(saved_policy, src)
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (src / "config.json").write_text(json.dumps(cfg))
    if files is not None:
        files(src)
    out = tmp_path / "run"
    result = import_cli(src, out)
    assert result.exit_code != 0 and match in result.output, result.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
