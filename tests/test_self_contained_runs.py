"""A run folder carries every file its blocks read: train a graph whose inputs (spec folder, FAST
tokenizer, a VLM's model folder with its processor and tokenizer) live in a temporary folder,
delete that folder, move the run, and load_policy must predict the same actions. Large base
weights may be referenced instead of copied; then a missing or changed file is named."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import graphvla
from graphvla.policy.policy import Policy
from graphvla.runners.train import Trainer, assets
from graphvla.spec.loader import load_spec
from vlm_samples import VLMSamples as Samples
from vlm_samples import vlm_bundle as _bundle

TINY = Path(__file__).parent.parent / "graphvla" / "graphs" / "tiny"


def _obs():
    rng = np.random.default_rng(1)
    return {"images": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), "instruction": "reach the goal",
            "state": rng.standard_normal(4).astype(np.float32)}


def _train_move_and_reload(spec_file, inputs, tmp_path):
    """Train 2 steps, predict, delete the inputs, move the run, load it, predict again."""
    spec = load_spec(str(spec_file), ["trainer.max_steps=2", "trainer.batch_size=2", "trainer.warmup_steps=1"])
    bundle = _bundle(Samples())
    trainer = Trainer.from_spec(spec, bundle, tmp_path / "run", progress=False)
    trainer.run()
    expected = Policy.from_compiled(trainer.cg, trainer.normalizer).infer(_obs())["actions"]
    shutil.rmtree(inputs)  # the spec folder, its tokenizer and model folders: gone
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "run"), moved)
    policy = graphvla.load_policy(moved)
    assert policy.metadata["fingerprint"] == spec.fingerprint  # still the trained graph's identity
    np.testing.assert_allclose(policy.infer(_obs())["actions"], expected, rtol=1e-5, atol=1e-6)
    return moved


def test_a_fast_graph_loads_without_its_spec_folder_or_tokenizer(tmp_path):
    inputs = tmp_path / "inputs"
    shutil.copytree(TINY / "base", inputs / "base")
    shutil.copytree(TINY / "fast_tokenizer", inputs / "fast_tokenizer")
    shutil.copy(TINY / "fast.yaml", inputs / "fast.yaml")
    run = _train_move_and_reload(inputs / "fast.yaml", inputs, tmp_path)
    ckpt = run / "checkpoints" / "step_0000002"
    manifest = yaml.safe_load((ckpt / "assets.json").read_text())
    assert manifest["head"]["tokenizer"]["value"] == "fast_tokenizer"
    assert (ckpt / "assets" / "head" / "tokenizer" / "tokenizer.json").is_file()


def _vlm_from_folder_spec(inputs):
    """tiny/oft.yaml with the VLM read from a model folder (weights, config, processor, tokenizer,
    chat template) instead of built in memory."""
    from graphvla.blocks.backbones.tiny_hf import save_tiny

    save_tiny("qwen3_vl", inputs / "tiny-qwen3vl")
    doc = yaml.safe_load((TINY / "base" / "qwen3vl.yaml").read_text())
    head = yaml.safe_load((TINY / "oft.yaml").read_text())["blocks"]["head"]
    doc["name"] = "tiny-qwen3vl-oft-from-folder"
    doc["blocks"]["vlm"]["with"] = {"model": "tiny-qwen3vl"}
    doc["blocks"]["head"] = head
    (inputs / "graph.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return inputs / "graph.yaml"


@pytest.mark.slow
def test_a_vlm_graph_loads_without_its_model_processor_or_tokenizer_folder(tmp_path):
    inputs = tmp_path / "inputs"
    spec_file = _vlm_from_folder_spec(inputs)
    copied = sorted(p.name for p in (inputs / "tiny-qwen3vl").iterdir())
    run = _train_move_and_reload(spec_file, inputs, tmp_path)
    folder = run / "checkpoints" / "step_0000002" / "assets" / "vlm" / "model"
    assert sorted(p.name for p in folder.iterdir()) == copied  # config, processor, tokenizer, weights
    assert not any(p.is_symlink() for p in folder.iterdir())  # small weights are copied


def test_large_base_weights_are_referenced_by_path_and_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "REFERENCE_ABOVE_BYTES", 0)  # reference every weight file, as for a 4B model
    inputs = tmp_path / "inputs"
    spec_file = _vlm_from_folder_spec(inputs)
    weights = inputs / "tiny-qwen3vl" / "model.safetensors"
    spec = load_spec(str(spec_file), ["trainer.max_steps=1", "trainer.batch_size=2", "trainer.warmup_steps=1"])
    Trainer.from_spec(spec, _bundle(Samples(4)), tmp_path / "run", progress=False).run()
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000001"
    entry = yaml.safe_load((ckpt / "assets.json").read_text())["vlm"]["model"]
    (ref,) = entry["referenced"]
    assert ref["file"] == "model.safetensors" and ref["source"] == str(weights.resolve())
    assert ref["sha256"] == assets.sha256_of(weights) and ref["bytes"] == weights.stat().st_size
    assert (ckpt / "assets" / "vlm" / "model" / "model.safetensors").is_symlink()
    assert (ckpt / "assets" / "vlm" / "model" / "tokenizer_config.json").is_file()  # the small files are copied
    graphvla.load_policy(tmp_path / "run").infer(_obs())  # the referenced file is there: loads
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match=rf"{weights.resolve()}.*changed.*{ref['sha256']}"):
        graphvla.load_policy(tmp_path / "run")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{weights.resolve()} \(sha256 {ref['sha256']}.*blocks.vlm.with.model"):
        graphvla.load_policy(tmp_path / "run")
