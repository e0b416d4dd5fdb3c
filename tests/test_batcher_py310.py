"""The batcher survives a batch-collection timeout on every supported Python. Before 3.11,
asyncio.wait_for raises asyncio.TimeoutError, which is not the builtin TimeoutError: catching the
builtin let the batcher task die and every later request hang. batching.py is stdlib-only, so each
interpreter that pyproject's requires-python admits and this machine has runs it directly."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = r'''
import asyncio, importlib.util, sys
spec = importlib.util.spec_from_file_location("batching", sys.argv[1])
batching = importlib.util.module_from_spec(spec)
sys.modules["batching"] = batching
spec.loader.exec_module(batching)

class Echo:  # the part of Policy's interface the batcher calls
    def infer(self, obs, session=None):
        return {"n": obs["n"]}
    def infer_batch(self, obs_list, sessions=None):
        return [self.infer(o) for o in obs_list]

async def main():
    # two clients connected, only one sends: collecting the batch times out after 5 ms
    b = batching.Batcher(Echo(), max_batch=4, max_wait_ms=5, active_clients=lambda: 2)
    b.start()
    first = await asyncio.wait_for(b.submit({"n": 1}, None), 5)
    second = await asyncio.wait_for(b.submit({"n": 2}, None), 5)  # hangs if the batcher task died
    await b.stop()
    print(first.output["n"], second.output["n"], first.batch_size)

asyncio.run(main())
'''


def _interpreters():
    """This interpreter, and every other supported one on PATH or under pyenv (3.10 matters most)."""
    seen, out = set(), [sys.executable]
    out += [p for p in (shutil.which(f"python3.{m}") for m in range(10, 15)) if p]
    out += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.*/bin/python3"))
    for path in out:
        probe = subprocess.run([path, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True)
        version = tuple(int(v) for v in probe.stdout.split()) if probe.returncode == 0 else None
        if version and version >= (3, 10) and version not in seen:
            seen.add(version)
            yield pytest.param(path, id=".".join(map(str, version)))


@pytest.mark.parametrize("python", list(_interpreters()))
def test_batcher_survives_a_collection_timeout(python):
    run = subprocess.run([python, "-c", SCRIPT, str(REPO / "graphvla" / "runners" / "serve" / "batching.py")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["1", "2", "1"]
