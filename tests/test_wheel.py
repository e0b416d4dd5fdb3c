"""The built wheel works outside the repository: it carries the graph library and the configs, and
its `graphvla` command, installed in a fresh virtual environment and run from an empty folder,
lists blocks, validates and compiles packaged graphs by name.

The wheel is built from a copy of the package sources (so a stale build/ folder in the checkout
cannot leak into it) and installed with --no-deps into a venv that sees the packages of the
environment running the tests (its torch and transformers): a .pth file adds that environment's
site folders. (`venv --system-site-packages` would not do: it sees the base interpreter's site,
which lacks them when the tests run in a virtual environment.) The test checks that the venv
imports its own graphvla, not the editable checkout."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def running_site_dirs() -> list[str]:
    """The site folders of the interpreter running the tests, in its sys.path order: its own
    environment's (a virtual environment's, when it runs in one) and any it sees beyond them."""
    candidates = [*site.getsitepackages(), site.getusersitepackages()]
    dirs = [p for p in sys.path if p in candidates or Path(p).name in ("site-packages", "dist-packages")]
    return [p for p in dict.fromkeys(dirs) if Path(p).is_dir()]


def _sh(args, cwd, env=None, timeout=300):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel file, the venv's bin folder, an empty folder to run in, the environment to run with)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "graphvla", src / "graphvla", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _sh([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist"],
        cwd=src)
    [wheel] = (tmp / "dist").glob("graphvla-*.whl")

    venv = tmp / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    purelib = _sh([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  cwd=tmp, env=env).stdout.strip()
    # after the venv's own site: the running environment's site folders, their .pth files processed
    lines = [f"import site; site.addsitedir({d!r})" for d in running_site_dirs()]
    (Path(purelib) / "_running_environment.pth").write_text("\n".join(lines) + "\n")
    # the running environment's pip installs into the venv it runs in; --ignore-installed: the
    # editable graphvla of the running environment must not count as installed
    _sh([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index",
         "--disable-pip-version-check", "-q", wheel], cwd=tmp, env=env)
    empty = tmp / "empty"
    empty.mkdir()
    return wheel, bin_dir, empty, env


def test_the_wheel_carries_the_graphs_and_configs(installed):
    wheel, *_ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("graphvla/graphs/tiny/querytf.yaml", "graphvla/graphs/tiny/base/qwen3vl.yaml",
                 "graphvla/graphs/tiny/fast_tokenizer/tokenizer.json", "graphvla/graphs/fullsize/base/ports.yaml",
                 "graphvla/graphs/metaworld/mt10-small-privileged.yaml", "graphvla/configs/benchmarks/metaworld.yaml",
                 "graphvla/configs/accelerate/deepspeed_zero3.yaml", "graphvla/blocks/backbones/configs/qwen3_vl_4b/config.json"):
        assert must in names, must
    # every data file of the package sources ships, not only the ones named above
    data = {p.relative_to(REPO).as_posix() for p in (REPO / "graphvla").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert data and data <= names, sorted(data - names)


def test_the_venv_sees_the_running_environment(installed):
    """Every site folder of the interpreter running the tests is on the venv's path, after the
    venv's own, so the venv imports the same torch this interpreter does."""
    _, bin_dir, empty, env = installed
    code = "import sys, sysconfig, torch; print(sysconfig.get_paths()['purelib']); print(torch.__file__); print(*sys.path, sep='\\n')"
    purelib, torch_file, *path = _sh([bin_dir / "python", "-c", code], cwd=empty, env=env).stdout.splitlines()
    import torch

    assert Path(torch_file).resolve() == Path(torch.__file__).resolve()
    for d in running_site_dirs():
        assert d in path and path.index(d) > path.index(purelib), d


def test_the_venv_imports_its_own_graphvla(installed):
    _, bin_dir, empty, env = installed
    out = _sh([bin_dir / "python", "-c", "import graphvla, graphvla.spec.library as l; "
               "print(graphvla.__file__); print(l.graphs_root())"], cwd=empty, env=env).stdout.split()
    venv = bin_dir.parent.resolve()
    for path in out:
        assert Path(path).resolve().is_relative_to(venv), path
        assert not Path(path).resolve().is_relative_to(REPO), path


def test_blocks_validate_and_compile_from_an_empty_folder(installed):
    _, bin_dir, empty, env = installed
    graphvla = bin_dir / "graphvla"
    assert graphvla.exists()

    blocks = _sh([graphvla, "blocks"], cwd=empty, env=env).stdout
    listed = [line.split()[0] for line in blocks.splitlines() if line.strip()]
    assert {"backbone.hf_vlm", "encoder.image", "head.query_transformer", "head.mlp"} <= set(listed)

    validate = _sh([graphvla, "validate", "tiny/querytf"], cwd=empty, env=env).stdout
    assert validate.startswith("tiny/querytf: ok (tiny-qwen3vl-querytf, fingerprint ")

    compiled = _sh([graphvla, "compile", "metaworld/mt10-small-privileged"], cwd=empty, env=env).stdout
    assert compiled.startswith("graph metaworld-mt10-small-privileged")
    assert "head      head.mlp" in compiled and "[B, 8, 4]" in compiled
    assert "graphs: train[action], infer" in compiled
    assert list(empty.iterdir()) == []  # nothing written where it ran
