"""Shared fixtures: the tiny example spec and helpers to write specs and catch spec errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from train_doubles import metaworld_data  # noqa: F401  (a session fixture: one recording for every module)

REPO = Path(__file__).resolve().parent.parent
TINY_SPEC = REPO / "graphvla" / "graphs" / "tiny" / "mlp.yaml"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test models are tiny: a second intra-op thread only adds contention on a 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_text() -> str:
    """The YAML text of graphvla/graphs/tiny/mlp.yaml (small encoders + MLP head)."""
    return TINY_SPEC.read_text()


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(name, text) -> path of a spec file written under tmp_path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write


def spec_issues(fn, *args, **kwargs):
    """Call fn, expect graphvla.SpecError, return its issues."""
    from graphvla import SpecError

    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    return info.value.issues
