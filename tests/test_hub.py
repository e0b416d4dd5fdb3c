"""Hugging Face Hub ids where a path is taken (graphvla/hub.py): every test builds a Hub cache in
tmp with huggingface_hub's real layout (models--org--name/{blobs, refs/<branch>, snapshots/<commit>}
whose files are symlinks to the blobs) and runs with HF_HUB_OFFLINE=1, so no test touches the
network. A tiny VLM in the cache trains via `model: org/name@revision`; a LeRobot recording in the
cache trains via `--data org/name`; a mistyped id or a missing revision is one error naming the id,
the revision, the cache folder and HF_HUB_OFFLINE, and writes nothing."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from graphvla import hub
from graphvla.cli import main
from graphvla.errors import SpecError

TINY = Path(__file__).parent.parent / "graphvla" / "graphs" / "tiny"
MAIN, V2 = "a" * 40, "b" * 40  # the commits of the cached repositories


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache under tmp, read offline (HF_HOME too, so nothing reaches ~/.cache)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


def put_in_cache(cache: Path, repo_type: str, repo_id: str, files: Path, commit: str, refs=("main",)) -> Path:
    """Store the files of folder `files` as snapshot `commit` of `repo_id`, as huggingface_hub
    does: content in blobs/<hash>, relative symlinks in snapshots/<commit>/, refs/<ref> -> commit."""
    storage = cache / f"{hub.REPO_TYPES[repo_type]}--{repo_id.replace('/', '--')}"
    snap = storage / "snapshots" / commit
    snap.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for f in sorted(files.rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snap


def folder_with(tmp_path, name, files: dict) -> Path:
    d = tmp_path / "src" / name
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- which values are ids ------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("Qwen/Qwen3-VL-4B-Instruct", ("Qwen/Qwen3-VL-4B-Instruct", None)),
    ("lerobot/aloha_sim_insertion_human", ("lerobot/aloha_sim_insertion_human", None)),
    ("lerobot/pusht@v2.1", ("lerobot/pusht", "v2.1")),
    (f"org/model.v1@{MAIN}", ("org/model.v1", MAIN)),
    ("org/name@refs/pr/3", ("org/name", "refs/pr/3")),
])
def test_ids_are_org_slash_name_with_an_optional_revision(value, expected):
    ref = hub.parse_id(value)
    assert (ref.repo_id, ref.revision) == expected and str(ref) == value


@pytest.mark.parametrize("value", ["tiny-qwen3vl", "./org/name", "../org/name", "/org/name", "~/org/name",
                                   "a/b/c", "org/name@", "org/-name", "org/name.", "org--x/name", "org/na..me",
                                   "configs/data.yaml", "org/name@../x", "org /name", ""])
def test_paths_and_malformed_values_are_not_ids(value):
    assert hub.parse_id(value) is None


def test_the_cache_folder_is_read_from_the_environment_when_resolving(tmp_path, monkeypatch):
    assert hub.cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / "hub"
    assert hub.offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.offline()


# -- resolution ---------------------------------------------------------------------------------

def test_a_revision_picks_its_snapshot_by_branch_tag_or_commit(tmp_path, hub_cache):
    put_in_cache(hub_cache, "model", "acme/thing", folder_with(tmp_path, "one", {"which.txt": "main"}), MAIN)
    put_in_cache(hub_cache, "model", "acme/thing", folder_with(tmp_path, "two", {"which.txt": "v2"}), V2,
                 refs=("v2", "dev"))
    read = lambda value: (hub.resolve(value) / "which.txt").read_text()  # noqa: E731
    assert read("acme/thing") == "main"  # the default branch
    assert read("acme/thing@main") == "main"
    assert read("acme/thing@v2") == "v2" and read("acme/thing@dev") == "v2"  # a tag, a branch
    assert read(f"acme/thing@{V2}") == "v2" and read(f"acme/thing@{MAIN}") == "main"  # commits
    assert hub.resolve("acme/thing@v2") == hub_cache / "models--acme--thing" / "snapshots" / V2


def test_a_local_path_always_wins_over_an_id(tmp_path, hub_cache):
    put_in_cache(hub_cache, "model", "acme/thing", folder_with(tmp_path, "one", {"which.txt": "hub"}), MAIN)
    local = folder_with(tmp_path, "spec/acme/thing", {"which.txt": "local"})
    assert hub.resolve("acme/thing", base=tmp_path / "src" / "spec") == local
    assert (hub.resolve("acme/thing", base=tmp_path / "elsewhere") / "which.txt").read_text() == "hub"
    # neither a path nor an id: the path as given, for the caller's own "not found" error
    assert hub.resolve("no/such/folder", base=tmp_path) == tmp_path / "no" / "such" / "folder"


def test_offline_and_missing_is_one_error_naming_the_id_the_cache_and_HF_HUB_OFFLINE(tmp_path, hub_cache):
    put_in_cache(hub_cache, "dataset", "lerobot/tiny-reach", folder_with(tmp_path, "d", {"x": "1"}), MAIN)
    with pytest.raises(hub.HubError) as e:
        hub.resolve("lerobt/tiny-reach", repo_type="dataset")
    msg = str(e.value)
    assert "'lerobt/tiny-reach'" in msg and str(hub_cache) in msg and "HF_HUB_OFFLINE=1" in msg
    assert "did you mean 'lerobot/tiny-reach'" in msg and "hf download lerobt/tiny-reach --repo-type dataset" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_a_missing_revision_names_the_revision_and_the_cached_ones(tmp_path, hub_cache):
    put_in_cache(hub_cache, "model", "acme/thing", folder_with(tmp_path, "one", {"which.txt": "main"}), MAIN)
    with pytest.raises(hub.HubError, match=r"revision 'v9' is not in the Hub cache .*models--acme--thing.*"
                                           r"HF_HUB_OFFLINE=1.*refs main; commits " + MAIN):
        hub.resolve("acme/thing@v9")
    with pytest.raises(hub.HubError, match=f"revision '{V2}'"):
        hub.resolve(f"acme/thing@{V2}")


def test_online_resolution_goes_through_huggingface_hub_with_the_cache_folder(tmp_path, hub_cache, monkeypatch):
    """Without HF_HUB_OFFLINE the id goes to huggingface_hub's snapshot_download (faked here: no
    network), with the cache folder, the revision and the repo type; on meta no weight file."""
    import huggingface_hub

    calls = []

    def fake(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(tmp_path)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert hub.resolve("acme/thing@v2", repo_type="dataset") == tmp_path
    assert hub.resolve("acme/model", weights=False) == tmp_path
    (_, a), (_, b) = calls
    assert a["revision"] == "v2" and a["repo_type"] == "dataset" and a["cache_dir"] == str(hub_cache)
    assert a["local_files_only"] is False and a["ignore_patterns"] is None
    assert "*.safetensors" in b["ignore_patterns"] and b["revision"] is None


# -- datasets ------------------------------------------------------------------------------------

def recording(root: Path) -> Path:
    """A tiny LeRobot recording for tiny/mlp's ports (one 64x64 view, state 8, actions 4)."""
    from graphvla.data.lerobot_write import LeRobotWriter

    rng = np.random.default_rng(0)
    w = LeRobotWriter(root, fps=10, features={"observation.images.cam": ("image", (64, 64, 3)),
                                              "observation.state": ("float32", (8,)), "action": ("float32", (4,))})
    for task in ("reach the goal", "push the button"):
        n = 12
        w.add_episode({"observation.images.cam": rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(n, 8)).astype(np.float32),
                       "action": rng.normal(size=(n, 4)).astype(np.float32)}, task)
    w.finalize()
    return root


def test_a_cached_lerobot_dataset_opens_and_trains_via_its_id(tmp_path, hub_cache):
    snap = put_in_cache(hub_cache, "dataset", "lerobot/tiny-reach", recording(tmp_path / "src" / "ds"), MAIN)
    info = cli("data", "info", "lerobot/tiny-reach")
    assert info.exit_code == 0, info.output
    assert "2 episodes, 24 frames" in info.output and "task 1: push the button" in info.output
    stats = cli("data", "stats", "lerobot/tiny-reach@main", "--keys", "action")
    assert stats.exit_code == 0, stats.output
    direct = cli("data", "stats", tmp_path / "src" / "ds", "--keys", "action")
    assert json.loads(stats.output) == json.loads(direct.output)  # the same frames as the folder itself

    res = cli("train", "tiny/mlp", "--data", "lerobot/tiny-reach", "-o", tmp_path / "run", "--no-progress",
              "--set", "trainer.max_steps=1", "--set", "trainer.batch_size=2", "--set", "trainer.warmup_steps=0")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "checkpoints" / "step_0000001" / "model.safetensors").is_file()
    noted = json.loads((tmp_path / "run" / "data.json").read_text())
    assert noted == {"data": "lerobot/tiny-reach", "datasets": [str(snap)]}


def test_a_data_yaml_entry_may_name_a_dataset_id(tmp_path, hub_cache):
    from graphvla.data.config import read_data_config

    snap = put_in_cache(hub_cache, "dataset", "lerobot/tiny-reach", recording(tmp_path / "src" / "ds"), V2,
                        refs=("v2.1",))
    (tmp_path / "data.yaml").write_text("datasets:\n  - path: lerobot/tiny-reach@v2.1\n    weight: 2\n")
    (entry,) = read_data_config(tmp_path / "data.yaml")
    assert entry.path == snap and entry.weight == 2.0
    (tmp_path / "typo.yaml").write_text("datasets:\n  - path: lerobot/tiny-reach@v3\n")
    with pytest.raises(hub.HubError, match=r"typo.yaml: datasets\[0\]: path 'lerobot/tiny-reach@v3': .*"
                                           r"revision 'v3' is not in the Hub cache"):
        read_data_config(tmp_path / "typo.yaml")


def test_a_mistyped_dataset_id_is_one_clear_error_and_writes_nothing(tmp_path, hub_cache):
    put_in_cache(hub_cache, "dataset", "lerobot/tiny-reach", recording(tmp_path / "src" / "ds"), MAIN)
    res = cli("train", "tiny/mlp", "--data", "lerobot/tiny-rech", "-o", tmp_path / "run", "--no-progress")
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "'lerobot/tiny-rech'" in lines[0] and str(hub_cache) in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert "did you mean 'lerobot/tiny-reach'" in lines[0]
    assert not (tmp_path / "run").exists()
    missing = cli("data", "info", "lerobot/tiny-reach@v9")
    assert missing.exit_code == 1 and "revision 'v9'" in missing.output and "refs main" in missing.output


def test_eval_data_names_a_missing_dataset_id_before_anything_runs(tmp_path, hub_cache):
    put_in_cache(hub_cache, "dataset", "lerobot/tiny-reach", recording(tmp_path / "src" / "ds"), MAIN)
    run = tmp_path / "run"
    run.mkdir()
    missing = cli("eval", run, "--protocol", "starvla-mt50", "--data", "lerobot/tiny-rech", "-o", tmp_path / "out")
    assert missing.exit_code != 0
    assert "'lerobot/tiny-rech'" in missing.output and "HF_HUB_OFFLINE=1" in missing.output
    assert "did you mean 'lerobot/tiny-reach'" in missing.output and not (tmp_path / "out").exists()


# -- models --------------------------------------------------------------------------------------

def vlm_spec(tmp_path, model: str, extra: dict | None = None) -> Path:
    """tiny/querytf.yaml with the VLM read from `model` (a Hub id here)."""
    doc = yaml.safe_load((TINY / "base" / "qwen3vl.yaml").read_text())
    doc["name"] = "tiny-qwen3vl-querytf-from-hub"
    doc["blocks"]["vlm"]["with"] = {"model": model, **(extra or {})}
    doc["blocks"]["head"] = yaml.safe_load((TINY / "querytf.yaml").read_text())["blocks"]["head"]
    (tmp_path / "spec").mkdir(exist_ok=True)
    path = tmp_path / "spec" / "graph.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_cached_vlm_trains_via_model_org_name_at_revision_and_the_run_carries_it(tmp_path, hub_cache):
    """main holds a broken snapshot (no config.json), v2 the tiny Qwen3-VL: `@v2` must pick v2. The
    run copies the snapshot (assets.json names the id, revision and commit) and loads without the cache."""
    import graphvla
    from graphvla.blocks.backbones.tiny_hf import save_tiny
    from graphvla.policy.policy import Policy
    from graphvla.runners.train import Trainer
    from graphvla.spec.loader import load_spec
    from vlm_samples import VLMSamples, vlm_bundle

    model = save_tiny("qwen3_vl", tmp_path / "src" / "tiny-qwen3vl")
    put_in_cache(hub_cache, "model", "acme/tiny-qwen3vl", folder_with(tmp_path, "broken", {"README.md": "wip"}), MAIN)
    put_in_cache(hub_cache, "model", "acme/tiny-qwen3vl", model, V2, refs=("v2",))
    spec = load_spec(str(vlm_spec(tmp_path, "acme/tiny-qwen3vl@v2")),
                     ["trainer.max_steps=1", "trainer.batch_size=2", "trainer.warmup_steps=0"])
    trainer = Trainer.from_spec(spec, vlm_bundle(VLMSamples(4)), tmp_path / "run", progress=False)
    trainer.run()
    vlm = trainer.cg.model[trainer.cg.block("vlm").owner]
    assert vlm.model_dir == hub_cache / "models--acme--tiny-qwen3vl" / "snapshots" / V2
    obs = {"images": np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8),
           "instruction": "reach the goal", "state": np.ones(4, np.float32)}
    expected = Policy.from_compiled(trainer.cg, trainer.normalizer).infer(obs)["actions"]

    ckpt = tmp_path / "run" / "checkpoints" / "step_0000001"
    entry = json.loads((ckpt / "assets.json").read_text())["vlm"]["model"]
    assert entry["value"] == "acme/tiny-qwen3vl@v2"
    assert entry["hub"] == {"repo_id": "acme/tiny-qwen3vl", "revision": "v2", "commit": V2}
    copied = ckpt / "assets" / "vlm" / "model"
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in model.iterdir())
    assert not any(p.is_symlink() for p in copied.iterdir())  # the blobs' content, not the cache's links
    shutil.rmtree(hub_cache)  # the run needs no cache any more
    np.testing.assert_array_equal(graphvla.load_policy(tmp_path / "run").infer(obs)["actions"], expected)


def test_compile_names_the_field_and_the_id_once_and_a_config_alone_compiles_offline(tmp_path, hub_cache):
    from graphvla.compiler.compile import compile_graph
    from graphvla.spec.loader import load_spec

    with pytest.raises(SpecError) as e:
        compile_graph(load_spec(str(vlm_spec(tmp_path, "Qwen/Qwen3-VL-4B-Instruct"))))
    text = e.value.format()
    assert "blocks.vlm.with.model" in text and "graph.yaml" in text
    assert text.count("'Qwen/Qwen3-VL-4B-Instruct'") == 1 and str(hub_cache) in text and "HF_HUB_OFFLINE=1" in text
    # with a config, compiling needs no weights: the id the cache lacks is built from the config on meta
    res = cli("compile", vlm_spec(tmp_path, "Qwen/Qwen3-VL-4B-Instruct", {"config": "qwen3_vl_4b"}))
    assert res.exit_code == 0, res.output


def test_pretrained_encoder_weights_import_from_a_hub_id(tmp_path, hub_cache):
    """encoder.efficientnet_lite's `weights` (an import of pretrained weights) takes a Hub id whose
    snapshot holds one .safetensors file: the block's weights are exactly that file's."""
    import torch
    from safetensors.torch import save_file

    from graphvla.blocks.base import BuildContext, ParamError, PortInfo
    from graphvla.blocks.encoder import efficientnet_lite as E

    info = {"images": PortInfo("image", (1, 1, 3, 64, 64), torch.float32, "inputs.images")}
    make = lambda weights: E.EfficientNetLiteEncoder({"weights": weights}, info, BuildContext("image"))  # noqa: E731
    torch.manual_seed(3)
    state = {k: v.clone() for k, v in make("none").net.state_dict().items()}
    folder = tmp_path / "src" / "lite0"
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    put_in_cache(hub_cache, "model", "acme/efficientnet-lite0", folder, MAIN)
    loaded = make("acme/efficientnet-lite0").net.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(ParamError, match=r"acme/efficientnet-lite1'.*HF_HUB_OFFLINE=1") as e:
        make("acme/efficientnet-lite1")
    assert e.value.key == "weights"
