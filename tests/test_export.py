"""graphvla export: the exported inference graph (normalization folded in, text tokenized in
Python) answers what the checkpoint's Policy answers (max |diff| <= 1e-5 in fp32), in both
formats; `graphvla serve DIR` speaks the same protocol with the same metadata; graphs that cannot
be exported are refused naming the graph, block, type and why, and nothing is written.

The small-encoder runs are untrained checkpoints (random weights, made-up statistics): parity needs
no training, and the mean/std statistics make the folded normalization matter. tiny/querytf (a tiny
Qwen3-VL + head.query_transformer) is trained two steps by the trainer: its processor runs in
Python before the exported graph."""
from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from graphvla import compile_graph
from graphvla.data.normalize import Normalizer
from graphvla.runners.export import MANIFEST, ExportError, export_policy, is_export_folder
from graphvla.runners.exported import load_exported
from graphvla.policy.loading import load_policy
from graphvla.runners.serve import ServeOptions, ServerThread
from graphvla.policy import checkpoint as C
from conftest import require_module
from train_doubles import tiny_spec


def require_onnx():
    """The ONNX exporter and runtime (the export extra, also a test dependency), or a skip (a failure under CI=true)."""
    for name in ("onnxscript", "onnxruntime"):
        require_module(name, "pip install -e .[export] (also in the test extra)")

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

MT10 = "graphvla/graphs/metaworld/mt10.yaml"
STATS = {"state": {"mean": [0.1, -0.2, 0.3, 0.5], "std": [0.5, 2.0, 1.5, 0.25]},
         "actions": {"mean": [0.2, -0.1, 0.0, 0.4], "std": [1.5, 0.5, 2.0, 1.0]}}
PROMPTS = ["reach the goal", "push the puck into the goal", "x", "open the drawer " * 10]  # the last is truncated


def make_run(spec, run_dir, stats=STATS, modes=None, seed=0):
    """A checkpoint of `spec` with random weights and `stats`, written as the trainer writes one.
    Parameters initialized to all zeros (a DiT's adaLN gates) are filled too, so that every input
    reaches the actions."""
    from safetensors.torch import save_model

    torch.manual_seed(seed)
    cg = compile_graph(spec, device="cpu")
    with torch.no_grad():
        for p in cg.model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    norm = Normalizer(stats, modes or {"state": "mean_std", "actions": "mean_std"})

    def write(d):
        save_model(cg.model, str(d / "model.safetensors"))
        (d / "spec.yaml").write_text(cg.spec.to_yaml())
        C.write_json(d / "graph.json", {"name": cg.name, "fingerprint": cg.fingerprint, "spec_file": None})
        C.write_json(d / "normalization.json", norm.to_dict())

    return C.write_checkpoint(run_dir, 1, write)


def observations(n=None, size=64, state_dim=4):
    n = len(PROMPTS) if n is None else n
    rng = np.random.default_rng(7)
    return [{"images": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
             "state": rng.standard_normal(state_dim).astype(np.float32) * 2, "instruction": PROMPTS[i % len(PROMPTS)]}
            for i in range(n)]


def max_diff(a: list, b: list) -> float:
    return max(float(np.abs(x["actions"] - y["actions"]).max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def mt10(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_run(MT10, root / "run")
    return root, load_policy(root / "run")


@pytest.fixture(scope="module")
def exported(mt10):
    root, _ = mt10
    return export_policy(root / "run", root / "exported")


def test_torch_export_answers_what_the_checkpoint_answers(mt10, exported):
    _, policy = mt10
    ex = load_exported(exported)
    obs = observations()
    eager = policy.infer_batch(obs)
    assert max(float(np.abs(o["actions"]).max()) for o in eager) > 0.1  # not a trivial output
    assert max_diff(ex.infer_batch(obs), eager) <= 1e-5  # a batch whose instructions differ in length
    for o in obs[:2]:  # and one at a time (batch 1, shorter token axis)
        assert max_diff([ex.infer(o)], [policy.infer(o)]) <= 1e-5
    # the normalization is in the graph: a changed state changes the actions as it does eagerly
    moved = [{**o, "state": o["state"] + 3.0} for o in obs]
    assert max_diff(ex.infer_batch(moved), policy.infer_batch(moved)) <= 1e-5
    assert max_diff(ex.infer_batch(moved), eager) > 1e-3


def test_the_folder_holds_what_a_server_needs(mt10, exported):
    _, policy = mt10
    assert is_export_folder(exported)
    manifest = json.loads((exported / MANIFEST).read_text())
    assert manifest["metadata"]["fingerprint"] == policy.cg.fingerprint
    assert manifest["metadata"]["inputs"] == policy.metadata["inputs"]
    assert manifest["serve"]["execute_steps"] == 4
    # the instruction is tokenized by the checkpoint's own processor step, saved in the folder and run
    # before the graph; the normalization steps are folded into the graph
    assert manifest["tokenizers"] == {}
    assert [d["name"] for d in manifest["inputs"]] == ["images", "state", "language.ids"]
    assert manifest["inputs"][2] == {"name": "language.ids", "kind": "step", "dtype": "int64",
                                     "shape": ["batch", "tokens"], "step": "language", "max_length": 96,
                                     "text": "instruction"}
    assert manifest["preprocess"]["steps"] == ["language: byte_tokens  instruction as text -> language.ids"]
    assert manifest["preprocess"]["folded"] == ["normalize  state (mean_std), actions (mean_std)"]
    steps = json.loads((exported / "preprocess.json").read_text())["steps"]
    assert [(s["kind"], s["config"]["max_length"]) for s in steps] == [("byte_tokens", 96)]
    for name in ("spec.yaml", "graph.json", "normalization.json", "policy.pt2"):
        assert (exported / name).is_file()
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".tmp-")]


def test_a_changed_graph_file_is_refused(mt10, exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with open(copy / "policy.pt2", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="sha256"):
        load_exported(copy)


def test_an_export_from_before_the_saved_steps_is_refused_with_how_to_convert(exported, tmp_path):
    """Version 1 folders tokenized by the manifest alone (no saved processor steps): refused, saying
    to export the checkpoint again."""
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(exported, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["version"] = 1
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="version 1 is not supported \\(this graphvla reads version 2\\); export the "
                                         "checkpoint again"):
        load_exported(copy)


def test_onnx_answers_what_the_checkpoint_answers(mt10):
    require_onnx()
    root, policy = mt10
    folder = export_policy(root / "run", root / "onnx", "onnx")
    ex = load_exported(folder)
    assert ex.manifest["graph_format"] == "onnx" and (folder / "policy.onnx").is_file()
    obs = observations()
    assert max_diff(ex.infer_batch(obs), policy.infer_batch(obs)) <= 1e-5
    assert max_diff([ex.infer(obs[2])], [policy.infer(obs[2])]) <= 1e-5


@contextmanager
def served_side_by_side(policy, folder):
    """Clients of `graphvla serve RUN` and `graphvla serve DIR` (their metadata checked equal but
    for `exported`)."""
    with ServerThread(policy, ServeOptions(port=0)) as eager_srv, \
            ServerThread(load_exported(folder), ServeOptions(port=0)) as srv:
        eager = WebsocketClientPolicy("127.0.0.1", eager_srv.port)
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        want, got = eager.get_server_metadata(), client.get_server_metadata()
        assert got.pop("exported") == "torch-export"
        assert got == want
        yield eager, client


def test_serve_dir_speaks_the_same_protocol(mt10, exported):
    _, policy = mt10
    obs = observations(3)
    with served_side_by_side(policy, exported) as (eager, client):
        for o in obs:
            assert np.abs(client.infer(o)["actions"] - eager.infer(o)["actions"]).max() <= 1e-5
        assert client.infer({"__graphvla_reset__": True}) == {"reset": True, "seed": 0}
        with pytest.raises(RuntimeError, match="'state': expected shape \\[4\\]"):
            client.infer({**obs[0], "state": np.zeros(5, np.float32)})
        assert np.abs(client.infer(obs[0])["actions"] - eager.infer(obs[0])["actions"]).max() <= 1e-5


def test_cli_export_and_its_errors(mt10, tmp_path):
    from graphvla.cli import main

    root, _ = mt10
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["export", str(root / "run"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "graph inputs: images float32" in result.output and f"graphvla serve {out}" in result.output
    again = CliRunner().invoke(main, ["export", str(root / "run"), "-o", str(out)])
    assert again.exit_code == 1 and "is not an empty folder" in again.output
    bad = CliRunner().invoke(main, ["export", str(root / "run"), "-o", str(tmp_path / "x"), "--format", "tflite"])
    assert bad.exit_code != 0 and "tflite" in bad.output


VISION = "    with: {width: 16, patch: 8, layers: 1}"
FLOW_SPEC = tiny_spec("blocks.head.type=HEAD", "blocks.head.with=WITH")  # HEAD, WITH: per test
SMALL_STATS = {"state": {"mean": [0.0] * 4, "std": [2.0] * 4}, "actions": {"mean": [0.0] * 3, "std": [1.0] * 3}}


def test_a_small_graph_with_a_text_transformer_exports_exactly(tmp_path):
    """encoder.text with an attention layer: padding to the batch's longest instruction must not
    change any row (the same padding the checkpoint's policy applies)."""
    spec = FLOW_SPEC.replace("HEAD", "head.mlp").replace("WITH", "{hidden: 32}")
    make_run(spec, tmp_path / "run", SMALL_STATS)
    policy = load_policy(tmp_path / "run")
    ex = load_exported(export_policy(tmp_path / "run", tmp_path / "out"))
    obs = observations(size=16)
    assert max_diff(ex.infer_batch(obs), policy.infer_batch(obs)) <= 1e-5
    assert max_diff([ex.infer(obs[3])], [policy.infer(obs[3])]) <= 1e-5


@pytest.mark.parametrize("head", ["head.flow_matching"])  # head.dual_system shares its sampler (FlowHead)
def test_a_flow_head_takes_its_noise_as_an_input_and_replays_sessions(tmp_path, head):
    """The Euler loop is unrolled; the starting noise is a graph input drawn from each session's
    generator as the checkpoint's head draws it, so seeded sessions get the checkpoint's actions."""
    spec = FLOW_SPEC.replace("HEAD", head).replace("WITH", "{width: 16, heads: 2, layers: 1, num_steps: 3}")
    make_run(spec, tmp_path / "run", SMALL_STATS)
    policy = load_policy(tmp_path / "run")
    ex = load_exported(export_policy(tmp_path / "run", tmp_path / "out"))
    noise = [d for d in ex.manifest["inputs"] if d["name"] == "noise"]
    assert noise == [{"name": "noise", "kind": "noise", "dtype": "float32", "shape": ["batch", 4, 3], "block": "head",
                      "num_steps": 3}]
    assert "noise" not in ex.metadata["inputs"]
    obs = observations(size=16)
    eager_sessions = [policy.new_session(10 + i) for i in range(len(obs))]
    sessions = [ex.new_session(10 + i) for i in range(len(obs))]
    for _ in range(2):  # two steps of each episode: the generators advance alike
        eager = policy.infer_batch(obs, sessions=eager_sessions)
        assert max_diff(ex.infer_batch(obs, sessions=sessions), eager) <= 1e-5
    first = ex.infer(obs[0], session=ex.new_session(10))
    assert max_diff([first], [policy.infer(obs[0], session=policy.new_session(10))]) <= 1e-5
    assert max_diff([first], [ex.infer(obs[0], session=ex.new_session(11))]) > 1e-3  # the noise matters
    with pytest.raises(ValueError, match="takes no inference options \\(got num_steps\\)"):
        ex.infer(obs[0], num_steps=5)


def test_a_cached_block_is_refused_by_name(tmp_path):
    spec = FLOW_SPEC.replace("HEAD", "head.mlp").replace("WITH", "{hidden: 32}")
    spec = spec.replace(VISION, VISION + "\n    infer: {every: 2}")
    make_run(spec, tmp_path / "run", SMALL_STATS)
    with pytest.raises(ExportError, match="block 'vision' \\(encoder.image\\) cannot be exported: infer.every=2"):
        export_policy(tmp_path / "run", tmp_path / "out")


# --- backbone.hf_vlm (tiny Qwen3-VL): the processor runs in Python, the model in the graph ------------

TINY_QUERYTF = "graphvla/graphs/tiny/querytf.yaml"
VLM_STATS = {"state": {"mean": [0.0] * 4, "std": [1.0] * 4}, "actions": {"mean": [0.0] * 4, "std": [1.0] * 4}}


@pytest.fixture(scope="module")
def tiny_querytf(tmp_path_factory):
    """tiny/querytf trained two steps (the trainer's own checkpoint) and its checkpoint policy."""
    from vlm_samples import VLMSamples, vlm_bundle

    from graphvla.runners.train import Trainer
    from graphvla.spec.loader import load_spec

    root = tmp_path_factory.mktemp("vlm-export")
    torch.manual_seed(0)
    spec = load_spec(TINY_QUERYTF, ["trainer.max_steps=2", "trainer.batch_size=2", "trainer.warmup_steps=1",
                                "trainer.num_workers=0", "trainer.save_every=100"])
    Trainer.from_spec(spec, vlm_bundle(VLMSamples()), root / "run", progress=False).run()
    return root, load_policy(root / "run")


@pytest.fixture(scope="module")
def tiny_querytf_exported(tiny_querytf):
    root, _ = tiny_querytf
    return export_policy(root / "run", root / "exported")


def test_the_traceable_qwen3vl_equals_the_eager_block():
    """hf_vlm_export.TensorQwen3VL (per-image attention by reshaping, static grid, gathers instead
    of boolean masks, rope positions from counts) against the block's own predict: two views of a
    non-square size (rows != cols moves the text after each image by max(rows, cols)), padded rows,
    every layer selected; and its rope positions against transformers' get_rope_index."""
    from graphvla.blocks.backbones.hf_vlm import encode_cpu
    from graphvla.blocks.backbones.hf_vlm_export import TensorQwen3VL, static_grid

    cg = compile_graph(TINY_QUERYTF, ["inputs.images.views=2", "inputs.images.size=[96, 160]",
                                  "blocks.vlm.with.layers=[0, 1]"], device="cpu")
    block = cg.model["vlm"].eval()
    grid = static_grid(block, 2, 96, 160)
    assert (grid.views, grid.t, grid.h, grid.w, grid.tokens) == (2, 1, 6, 10, 15)
    tensors = TensorQwen3VL(block, grid).eval()
    images = torch.rand(3, 2, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    texts = ["reach the goal", "push the puck into the goal, then reach the goal again", "x"]
    # what the block's processor step makes is what the exported graph takes
    step = block.processor_step()
    encoding = {k[len("vlm."):]: v for k, v in step({"images": images, "instruction": texts}).items()
                if k.startswith("vlm.")}
    made = {f: encoding[f] for f in ("pixel_values", "input_ids", "attention_mask")}
    assert made["pixel_values"].shape == (3, 2 * 60, 1536) and not made["attention_mask"].all()  # rows are padded
    with torch.no_grad():
        want, got = block.predict(**encoding), tensors(**made)
    for name in ("hidden", "layers", "mask"):
        assert got[name].shape == want[name].shape
        assert float((got[name].float() - want[name].float()).abs().max()) <= 1e-5, name
    assert float(want["hidden"].abs().max()) > 0.1
    enc = encode_cpu(block.processor, images, texts)
    rope, _ = block.model.model.get_rope_index(enc["input_ids"], enc["mm_token_type_ids"], enc["image_grid_thw"],
                                               attention_mask=enc["attention_mask"])
    assert torch.equal(tensors.rope_positions(made["input_ids"] == tensors.image_token_id, made["attention_mask"]), rope)


def vlm_observations(n=None):
    return observations(n, size=128)


def test_tiny_querytf_exports_exactly(tiny_querytf, tiny_querytf_exported):
    """The trained tiny/querytf through torch.export answers the checkpoint's actions; the processor
    is saved in the folder and named in the manifest, and the graph takes its tensors."""
    _, policy = tiny_querytf
    folder = tiny_querytf_exported
    ex = load_exported(folder)
    obs = vlm_observations()
    eager = policy.infer_batch(obs)
    assert max(float(np.abs(o["actions"]).max()) for o in eager) > 0.1
    assert max_diff(ex.infer_batch(obs), eager) <= 1e-5  # instructions of different lengths: padded rows
    for o in obs[:2]:  # one at a time: other token lengths than at export
        assert max_diff([ex.infer(o)], [policy.infer(o)]) <= 1e-5
    # the image and the instruction reach the actions through the graph as they do eagerly
    other = [{**o, "images": 255 - o["images"], "instruction": PROMPTS[(i + 1) % len(PROMPTS)]} for i, o in enumerate(obs)]
    assert max_diff(ex.infer_batch(other), policy.infer_batch(other)) <= 1e-5
    assert max_diff(ex.infer_batch(other), eager) > 1e-4
    manifest = ex.manifest
    # the VLM's processor step runs before the graph (saved with its files); the graph takes its
    # tensors, the image grid excepted (fixed by the declared image size)
    assert [d["name"] for d in manifest["inputs"]] == ["state", "vlm.input_ids", "vlm.attention_mask",
                                                        "vlm.pixel_values"]
    assert manifest["inputs"][1] == {"name": "vlm.input_ids", "kind": "step", "dtype": "int64",
                                     "shape": ["batch", "tokens"], "step": "vlm", "max_length": 2048,
                                     "text": "instruction"}
    assert manifest["inputs"][3]["shape"] == ["batch", 64, 1536]
    assert manifest["tokenizers"] == {}
    assert manifest["preprocess"]["steps"] == [
        "vlm: hf_vlm_processor  images, instruction as text -> vlm.input_ids, vlm.attention_mask, "
        "vlm.mm_token_type_ids, vlm.pixel_values, vlm.image_grid_thw"]
    assert (folder / "preprocess" / "0-hf_vlm_processor" / "tokenizer_config.json").is_file()


def test_a_vlm_export_refuses_what_the_checkpoint_refuses(tiny_querytf, tiny_querytf_exported):
    """The processor runs before the graph as it runs in the block: an instruction holding the
    image placeholder is refused by both with the processor's message."""
    _, policy = tiny_querytf
    bad = {**vlm_observations(1)[0], "instruction": "look <|image_pad|> here"}
    exported = load_exported(tiny_querytf_exported)
    for p in (policy, exported):
        with pytest.raises(ValueError, match="Found total 2 <\\|image_pad\\|> tokens and 1 images"):
            p.infer(bad)
    # the graph's token axis ends at the text model's context; a longer prompt is refused by name
    with pytest.raises(ValueError, match="'instruction': the prompt is [0-9]+ tokens long; block 'vlm' takes at most "
                                         "2048"):
        exported.infer({**bad, "instruction": "zq " * 2100})


def test_tiny_querytf_onnx_exports_exactly(tiny_querytf):
    require_onnx()
    root, policy = tiny_querytf
    ex = load_exported(export_policy(root / "run", root / "onnx", "onnx"))
    obs = vlm_observations()
    assert max_diff(ex.infer_batch(obs), policy.infer_batch(obs)) <= 1e-5
    assert max_diff([ex.infer(obs[2])], [policy.infer(obs[2])]) <= 1e-5


def test_serve_dir_of_a_vlm_export_answers_the_checkpoints_actions(tiny_querytf, tiny_querytf_exported):
    _, policy = tiny_querytf
    with served_side_by_side(policy, tiny_querytf_exported) as (eager, client):
        for o in vlm_observations(3):
            assert np.abs(client.infer(o)["actions"] - eager.infer(o)["actions"]).max() <= 1e-5


def test_a_bfloat16_vlm_exports_for_torch_only(tmp_path):
    """bfloat16 weights trace as float32 ones do (the actions, float32 after the head, match);
    --format onnx is refused by name: onnxruntime's CPU Conv has no bfloat16 kernel."""
    from graphvla.spec.loader import load_spec

    make_run(load_spec(TINY_QUERYTF, ["blocks.vlm.with.dtype=bfloat16"]), tmp_path / "run", VLM_STATS)
    with pytest.raises(ExportError, match="block 'vlm' \\(backbone.hf_vlm\\) cannot be exported: --format onnx: "
                                          "with.dtype=bfloat16: onnxruntime's CPU kernels have no bfloat16 Conv"):
        export_policy(tmp_path / "run", tmp_path / "onnx", "onnx")
    assert not (tmp_path / "onnx").exists()
    ex, policy = load_exported(export_policy(tmp_path / "run", tmp_path / "out")), load_policy(tmp_path / "run")
    obs = vlm_observations(2)
    assert max_diff(ex.infer_batch(obs), policy.infer_batch(obs)) <= 1e-5


@pytest.mark.parametrize("change, why", [
    ("blocks.vlm.with.tiny=qwen2_5_vl", "its model is 'qwen2_5_vl'; only Qwen3-VL"),
    ("blocks.vlm.with.action_vocab=16", "with.action_vocab: it decodes action tokens autoregressively"),
])
def test_other_vlms_are_refused_by_name(tmp_path, change, why):
    """Only what is exact is exported: another model family, or FAST through the VLM, is refused
    naming the block, and nothing is written."""
    from graphvla.spec.loader import load_spec

    make_run(load_spec(TINY_QUERYTF, [change]), tmp_path / "run", VLM_STATS)
    with pytest.raises(ExportError, match=f"graph 'tiny-qwen3vl-querytf': block 'vlm' \\(backbone.hf_vlm\\) cannot be "
                                          f"exported: {why}"):
        export_policy(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
