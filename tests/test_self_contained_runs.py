"""A run folder carries every file its blocks read: train a graph whose inputs (spec folder, FAST
tokenizer, a VLM's model folder with its processor and tokenizer) live in a temporary folder,
delete that folder, move the run, and load_policy must predict the same actions. Large base
weights may be referenced instead of copied: a checkpoint holding every weight loads without them
(bit-identical actions); one that leaves a block's frozen base to them (trainer.base_weights:
reference) reads it, and names a missing or changed file with its sha256."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import graphvla
from graphvla.policy import assets
from graphvla.policy.policy import Policy
from graphvla.runners.train import Trainer
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
    # the checkpoint's tensors assigned to blocks built on meta: bit-identical to the trained model
    np.testing.assert_array_equal(policy.infer(_obs())["actions"], expected)
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
    """tiny/querytf.yaml with the VLM read from a model folder (weights, config, processor, tokenizer,
    chat template) instead of built in memory."""
    from graphvla.blocks.backbones.tiny_hf import save_tiny

    save_tiny("qwen3_vl", inputs / "tiny-qwen3vl")
    doc = yaml.safe_load((TINY / "base" / "qwen3vl.yaml").read_text())
    head = yaml.safe_load((TINY / "querytf.yaml").read_text())["blocks"]["head"]
    doc["name"] = "tiny-qwen3vl-querytf-from-folder"
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


def _referenced_run(tmp_path, monkeypatch, overrides=()):
    """Train tiny/querytf from a model folder whose weight file is referenced (as for a 4B model);
    returns (checkpoint, the base weights file, its manifest entry, the in-memory actions)."""
    monkeypatch.setattr(assets, "REFERENCE_ABOVE_BYTES", 0)  # reference every weight file
    spec_file = _vlm_from_folder_spec(tmp_path / "inputs")
    weights = tmp_path / "inputs" / "tiny-qwen3vl" / "model.safetensors"
    spec = load_spec(str(spec_file), ["trainer.max_steps=1", "trainer.batch_size=2", "trainer.warmup_steps=1", *overrides])
    trainer = Trainer.from_spec(spec, _bundle(Samples(4)), tmp_path / "run", progress=False)
    trainer.run()
    expected = Policy.from_compiled(trainer.cg, trainer.normalizer).infer(_obs())["actions"]
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000001"
    (ref,) = yaml.safe_load((ckpt / "assets.json").read_text())["vlm"]["model"]["referenced"]
    return ckpt, weights, ref, expected


@pytest.mark.slow
def test_a_checkpoint_with_every_weight_loads_without_its_referenced_base_weights(tmp_path, monkeypatch):
    ckpt, weights, ref, expected = _referenced_run(tmp_path, monkeypatch)
    assert ref["file"] == "model.safetensors" and ref["source"] == str(weights.resolve())
    assert ref["sha256"] == assets.sha256_of(weights) and ref["bytes"] == weights.stat().st_size
    assert (ckpt / "assets" / "vlm" / "model" / "model.safetensors").is_symlink()
    assert (ckpt / "assets" / "vlm" / "model" / "tokenizer_config.json").is_file()  # the small files are copied
    weights.unlink()  # model.safetensors holds every weight: the base file is never read
    policy = graphvla.load_policy(ckpt)
    np.testing.assert_array_equal(policy.infer(_obs())["actions"], expected)  # bit-identical to the trained model
    assert not [n for n, t in policy.cg.model.state_dict().items() if t.is_meta]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["blocks.vlm.train.freeze=true"], ["blocks.vlm.train.lora.r=4"]],
                         ids=["frozen", "lora"])
def test_base_weights_reference_leaves_the_frozen_base_out_and_load_policy_reads_it(tmp_path, monkeypatch, overrides):
    """trainer.base_weights=reference: model.safetensors holds the head and the adapters, not the VLM's
    frozen base; load_policy and --resume read it from the referenced file, and name it (path and
    sha256) when it is missing or changed."""
    from safetensors.torch import load_file, save_file

    lora = "lora" in overrides[0]
    ckpt, weights, ref, expected = _referenced_run(tmp_path, monkeypatch, ["trainer.base_weights=reference", *overrides])
    stored = load_file(str(ckpt / "model.safetensors"))
    in_vlm = [k for k in stored if k.startswith("vlm.")]
    assert any(k.startswith("head.") for k in stored)
    assert (in_vlm and all(".lora_" in k for k in in_vlm)) if lora else not in_vlm
    # the base file is there: the block's frozen weights come from it, the rest from the checkpoint
    np.testing.assert_array_equal(graphvla.load_policy(ckpt).infer(_obs())["actions"], expected)
    spec = load_spec(str(tmp_path / "inputs" / "graph.yaml"), ["trainer.max_steps=2", "trainer.batch_size=2",
                                                               "trainer.warmup_steps=1", "trainer.base_weights=reference",
                                                               *overrides])
    resumed = Trainer.from_spec(spec, _bundle(Samples(4)), tmp_path / "run", progress=False, resume=True).run()
    assert resumed.step == 2
    if lora:  # a base file holds no adapter: a missing one is refused, not filled with a fresh one
        adapter = sorted(in_vlm)[0]
        save_file({k: v for k, v in stored.items() if k != adapter}, str(ckpt / "model.safetensors"))
        with pytest.raises(ValueError, match=rf"do not fit .*missing {adapter}"):
            graphvla.load_policy(ckpt)
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match=rf"{weights.resolve()}.*changed.*{ref['sha256']}"):
        graphvla.load_policy(tmp_path / "run")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{weights.resolve()} \(sha256 {ref['sha256']}.*blocks.vlm.with.model"):
        graphvla.load_policy(tmp_path / "run")


def test_a_checkpoint_missing_weights_of_a_block_without_references_does_not_fit(tmp_path):
    from safetensors.torch import load_file, save_file

    inputs = tmp_path / "inputs"
    shutil.copytree(TINY / "base", inputs / "base")
    shutil.copytree(TINY / "fast_tokenizer", inputs / "fast_tokenizer")
    shutil.copy(TINY / "fast.yaml", inputs / "fast.yaml")
    spec = load_spec(str(inputs / "fast.yaml"), ["trainer.max_steps=1", "trainer.batch_size=2", "trainer.warmup_steps=1"])
    Trainer.from_spec(spec, _bundle(Samples(4)), tmp_path / "run", progress=False).run()
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000001"
    state = load_file(str(ckpt / "model.safetensors"))
    dropped = sorted(k for k in state if k.startswith("head."))[0]
    save_file({k: v for k, v in state.items() if k != dropped}, str(ckpt / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"weights do not fit graph .*missing {dropped}"):
        graphvla.load_policy(ckpt)
