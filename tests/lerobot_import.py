"""`graphvla import lerobot` as the LeRobot policy tests call it, and the checks they share (a refusal; weights
under other names importing to the same run)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def import_cli(src: Path, out: Path, *options: str):
    from click.testing import CliRunner

    from graphvla.cli import main

    return CliRunner().invoke(main, ["import", "lerobot", str(src), "-o", str(out), *options])


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


def renamed_weights_import_the_same(saved_policy: Path, imported_run: Path, tmp_path: Path, rename, renamed_prefix: str):
    """A copy of `saved_policy` whose model.safetensors keys are renamed by `rename` (a key -> key function;
    the renamed keys must include one starting with `renamed_prefix`, so the rename is exercised) imports
    to exactly the tensors of `imported_run`."""
    from safetensors.torch import load_file, save_file
    import torch

    src = tmp_path / "src"
    shutil.copytree(saved_policy, src)
    t = load_file(str(src / "model.safetensors"))
    renamed = {rename(k): v for k, v in t.items()}
    assert any(k.startswith(renamed_prefix) for k in renamed)
    save_file(renamed, str(src / "model.safetensors"))
    result = import_cli(src, tmp_path / "run")
    assert result.exit_code == 0, result.output
    a = load_file(str(next((tmp_path / "run").rglob("model.safetensors"))))
    b = load_file(str(next(imported_run.rglob("model.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
