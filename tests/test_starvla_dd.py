"""graphs/starvla/qwen3vl-discrete-diffusion (and qwen25vl-discrete-diffusion) is starVLA's
QwenDiscreteDiffusion: with the weights starVLA's own code initialised (tests/fixtures/starvla/qwendd
and qwendd_qwen25, written by scripts/parity/starvla_dd.py from starVLA at 0ed0aad on tiny Qwen-VLs,
float32 on the CPU), the packaged graph gives starVLA's training loss (with the masks starVLA drew)
and its actions - MaskGIT decoding with temperatures 0.1 and the draws starVLA made, greedy decoding,
known-prefix inpainting (predict_action_realtime), the 8-bit representation - within 1e-5. No
starVLA code is imported: only its numbers. Every key of starVLA's state_dict maps to exactly one
key of the graph's. Then: the head's RTC in a served session (tiny graph)."""
from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from graphvla.blocks.heads.flow_matching import Inpainting
from graphvla.compiler.compile import compile_graph
from graphvla.errors import SpecError
from graphvla.protocol import RTC_KEY
from graphvla.runners.importers.starvla import graph_key
from graphvla.spec.loader import load_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from starvla_weights import load_state, read_part, state_index, state_metadata  # noqa: E402  (bench/: the weights store)

warnings.filterwarnings("ignore")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "starvla"
FIXTURE, FIXTURE_25 = FIXTURES / "qwendd", FIXTURES / "qwendd_qwen25"
GRAPHS = Path(__file__).resolve().parents[1] / "graphvla" / "graphs" / "starvla"
GRAPH, GRAPH_25 = GRAPHS / "qwen3vl-discrete-diffusion.yaml", GRAPHS / "qwen25vl-discrete-diffusion.yaml"
TOL = 1e-5


def meta_of(fixture=FIXTURE) -> dict:
    return json.loads((fixture / "case.json").read_text())


def load(fixture, name):
    return load_file(str(fixture / f"{name}.safetensors"))


def fixture_graph(graph=GRAPH, fixture=FIXTURE, state=None, **head_with):
    """The packaged graph at the fixture's sizes (its tiny VLM's config and processor, float32; the
    fixture's 64-row position tables), with starVLA's weights loaded through the importer's mapping."""
    meta = meta_of(fixture)
    spec = copy.deepcopy(load_spec(str(graph)).data)
    vlm = spec["blocks"]["vlm"]["with"]
    for key in ("model", "dtype", "gradient_checkpointing"):
        vlm.pop(key, None)
    vlm.update(config=json.loads((fixture / "vlm" / "config.json").read_text()), processor=str(fixture / "vlm"))
    h, a = meta["horizon"], meta["action_dim"]
    spec["inputs"]["images"].update(views=meta["views"], size=[meta["image_size"]] * 2)
    spec["inputs"]["actions"].update(dim=a, horizon=h)
    spec["inputs"]["actions_mask"]["shape"] = [h]
    spec["inputs"]["state"]["dim"] = meta["state_dim"]
    spec["blocks"]["head"]["with"].update(max_seq_len=64, max_positions=64, **head_with)
    cg = compile_graph(spec, device="cpu")
    state = starvla_state(fixture) if state is None else state
    mapped = {graph_key(k, "QwenDiscreteDiffusion"): v for k, v in state.items()}
    assert None not in mapped and len(mapped) == len(state)  # no two starVLA keys land on one graph key
    assert set(mapped) == set(cg.model.state_dict())  # every key accounted for, both ways
    cg.model.load_state_dict(mapped, strict=True)
    cg.model.eval()
    return cg


def starvla_state(fixture=FIXTURE) -> dict:
    """starVLA's state_dict of a fixture (its state.json in the weights store, sha256 checked). The
    Qwen2.5-VL fixture's head came out of the same seed as the Qwen3-VL fixture's, tensor for tensor
    (checked by the script): the store holds it once for both."""
    return load_state(fixture)


@pytest.fixture(scope="module")
def graph():
    return fixture_graph()


def observation(fixture=FIXTURE) -> dict:
    meta, case = meta_of(fixture), load(fixture, "case")
    images = case["images"].permute(0, 1, 4, 2, 3).float() / 255  # uint8 [B, V, H, W, 3] -> [B, V, 3, H, W]
    # the state is given as starVLA was given it (cg.feed does not normalize)
    return {"images": images, "instruction": list(meta["instructions"]), "state": load(fixture, "case_state")["state"]}


def loss_of(cg, fixture=FIXTURE):
    """The head's training loss on the fixture's batch with the uniforms starVLA's apply_mask drew."""
    case = load(fixture, "case")
    fed = cg.feed(observation(fixture))
    with torch.no_grad():
        vlm = cg.model["vlm"](**{k[len("vlm_"):]: v for k, v in fed.items() if k.startswith("vlm_")})
        return cg.model["head"](context=vlm["layers"], context_mask=vlm["mask"], state=fed["state"],
                                target=case["actions"], mask_noise=case["mask_noise"])["loss"], fed


def test_the_fixtures_are_starvla_qwendiscretediffusion_at_the_pinned_commit():
    for fixture in (FIXTURE, FIXTURE_25):
        meta = meta_of(fixture)
        assert meta["framework"] == "QwenDiscreteDiffusion" and meta["starvla_commit"].startswith("0ed0aad")
        assert meta["dtype"] == "float32" and meta["num_inference_steps"] == 8
        assert state_metadata(fixture)["starvla_commit"] == meta["starvla_commit"]
    assert json.loads((FIXTURE_25 / "vlm" / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    # the same head on both VLMs: one part of the weights store, named by both fixtures
    heads = [{p for p in state_index(f)["parts"] if read_part(FIXTURES / p).keys() >= {"action_model.model.proj_out_2.weight"}}
             for f in (FIXTURE, FIXTURE_25)]
    assert len(heads[0]) == 1 and heads[0] == heads[1], heads
    # starVLA's own 8-bit loss fails at this commit (its BCE compares [B, L, 8] with [B, H, A, 8])
    assert "must be the same as input size" in meta_of()["bit_loss_error"]


@pytest.mark.parametrize("which", ["qwen3vl", "qwen25vl"])
def test_training_loss_and_greedy_actions_match_starvla(which, graph):
    cg, fixture = (graph, FIXTURE) if which == "qwen3vl" else (fixture_graph(GRAPH_25, FIXTURE_25), FIXTURE_25)
    loss, fed = loss_of(cg, fixture)
    case = load(fixture, "case")
    assert torch.equal(fed["vlm_input_ids"], case["input_ids"])  # starVLA's prompt, token for token
    diff = abs(loss.item() - case["loss"].item())
    head = cg.model["head"]
    with torch.no_grad():
        head.params.update(decode_temperature=0.0, choice_temperature=0.0)
        try:
            greedy = cg.infer(**fed)["actions"]
        finally:
            head.params.update(decode_temperature=0.1, choice_temperature=0.1)
    diff_a = (greedy - load(fixture, "case_greedy")["actions"]).abs().max().item()
    print(f"{which}: loss {loss.item():.7f} vs starVLA {case['loss'].item():.7f} (|diff| {diff:.2e}); greedy {diff_a:.2e}")
    assert diff <= TOL and diff_a <= TOL


def test_sampled_decoding_matches_starvla_with_its_draws(graph):
    """predict_action at starVLA's temperatures (0.1, 0.1): the Exp(1) draws behind its
    torch.multinomial and its ranking uniforms, passed as the graph's `noise`, give its actions."""
    fed = graph.feed(observation())
    case = load(FIXTURE, "case_predict")
    with torch.no_grad():
        actions = graph.infer(**fed, noise=case["noise"])["actions"]
        other = graph.infer(**fed, noise=case["noise"].roll(1, dims=0))["actions"]  # the rows' draws swapped
    diff = (actions - case["actions"]).abs().max().item()
    print(f"sampled decode max |diff| {diff:.2e}")
    assert diff <= TOL
    assert (other - case["actions"]).abs().max().item() > 100 * TOL  # the draws matter: the check can fail


def test_known_prefix_inpainting_matches_starvla_realtime(graph):
    """predict_action_realtime(prev chunk of 2 steps, execution_horizon 2): the 2 steps are pinned to
    the bins of the previous actions, the other 2 decoded in max(1, 8 x 14 / 28) = 4 rounds. Here
    the pinned steps are those with an RTC weight > 0."""
    meta, case = meta_of(), load(FIXTURE, "case_rtc")
    h, a = meta["horizon"], meta["action_dim"]
    target = torch.zeros(2, h, a)
    target[:, :2] = case["previous"]
    weights = torch.tensor([[1.0, 0.4, 0.0, 0.0]] * 2)
    assert case["noise"].shape[1] == meta["rtc"]["rounds"] == 4
    with torch.no_grad():
        actions = graph.infer(**graph.feed(observation()), noise=case["noise"], rtc=Inpainting(target, weights))["actions"]
    diff = (actions - case["actions"]).abs().max().item()
    print(f"inpainting max |diff| {diff:.2e}")
    assert diff <= TOL
    centers = ((target[:, :2].clamp(-1 + 1e-6, 1 - 1e-6) + 1) / 2 * 256).floor() / 128 - 1 + 1 / 256
    assert torch.allclose(actions[:, :2], centers, atol=1e-6)  # the pinned steps: their bins' centres


def test_bit_representation_decodes_as_starvla():
    """The 8-bit variant (BCE on 8 bit logits; bit_i = u_i < sigmoid(logit_i) when sampling): its
    predict_action with starVLA's draws. Its loss is not compared (starVLA's raises at 0ed0aad)."""
    state = {**load_state(FIXTURE), **load_state(FIXTURE, "state_bit")}
    cg = fixture_graph(state=state, representation="bit")
    case = load(FIXTURE, "case_bit")
    with torch.no_grad():
        actions = cg.infer(**cg.feed(observation()), noise=case["noise"])["actions"]
    diff = (actions - case["actions"]).abs().max().item()
    print(f"bit decode max |diff| {diff:.2e}")
    assert diff <= TOL
    loss, _ = loss_of(cg)
    assert torch.isfinite(loss) and loss.item() > 0


def test_the_loss_is_masked_token_ce_plus_l1_and_a_changed_weight_breaks_parity(graph):
    """The reduction: per row the cross-entropy summed over the masked tokens / their count, mean over
    the rows, + 0.1 x mean |argmax-decoded - actions|; and one head weight changed moves the loss."""
    head = graph.model["head"]
    case = load(FIXTURE, "case")
    loss, fed = loss_of(graph)
    with torch.no_grad():
        vlm = graph.model["vlm"](**{k[len("vlm_"):]: v for k, v in fed.items() if k.startswith("vlm_")})
        k = head.params["repeated_diffusion_steps"]
        actions = case["actions"].repeat(k, 1, 1)
        bins = head.binning.encode(actions)
        tokens = head.apply_mask(bins, case["mask_noise"])
        masked = tokens == -100
        state = head._state(fed["state"].repeat(k, 1))
        memories = [m.repeat(k, 1, 1) for m in head._memories(vlm["layers"], None)[0]]
        logits = head.logits(memories, vlm["mask"].repeat(k, 1), tokens, state)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 2), bins.flatten(), reduction="none").view(bins.shape)
        by_row = (ce * masked).sum(dim=(1, 2)) / masked.sum(dim=(1, 2))
        decoded = head.binning.bin_centers[logits.argmax(-1)]
        expected = by_row.mean() + 0.1 * (decoded - actions).abs().mean()
        assert abs(loss.item() - expected.item()) <= 1e-5
        # starVLA's training masks: the cosine share of the 28 tokens, at least one per row
        r = case["mask_noise"][:, 0]
        share = torch.clamp(1 - torch.cos(torch.pi * 0.5 * r), 1e-6, 1)
        assert masked.sum(dim=(1, 2)).tolist() == (28 * share).round().long().clamp(1, 28).tolist()
        saved = head.model.proj_out_2.bias.clone()
        try:
            head.model.proj_out_2.bias[0] += 1.0
            moved, _ = loss_of(graph)
        finally:
            head.model.proj_out_2.bias.copy_(saved)
    assert abs(moved.item() - case["loss"].item()) > 100 * TOL


def test_the_other_settings_follow_starvlas_formulas(graph):
    """Settings the fixtures leave at starVLA's defaults: the linear masking schedule, no_mask_token_prob,
    use_simple_max, and GraphVLA's actions_mask (padded steps never counted)."""
    head = graph.model["head"]
    case = load(FIXTURE, "case")
    noise = case["mask_noise"].clone()
    rows, L = noise.shape[0], 28
    noise[:, 1 + L:] = torch.rand(rows, L, generator=torch.Generator().manual_seed(0))
    bins = head.binning.encode(case["actions"].repeat(2, 1, 1))
    saved = dict(head.params)
    try:
        head.params.update(train_mask_schedule="linear")
        masked = head.apply_mask(bins, noise) == -100
        assert masked.sum(dim=(1, 2)).tolist() == (L * noise[:, 0].clamp(1e-6, 1)).round().long().clamp(1, L).tolist()
        head.params.update(train_mask_schedule="cosine", no_mask_token_prob=0.5)
        kept = head.apply_mask(bins, noise) == -100
        before = head.params.update(no_mask_token_prob=0.0) or head.apply_mask(bins, noise) == -100
        assert torch.equal(kept, before & ~(noise[:, 1 + L:].reshape(bins.shape) < 0.5)) and kept.sum() < before.sum()
        head.params.update(use_simple_max=True)
        fed = graph.feed(observation())
        with torch.no_grad():
            simple = graph.infer(**fed)["actions"]
            vlm = graph.model["vlm"](**{k[len("vlm_"):]: v for k, v in fed.items() if k.startswith("vlm_")})
            memories, mem_mask = head._memories(vlm["layers"], vlm["mask"])
            all_masked = torch.full((2, 4, 7), 256)
            logits = head.logits(memories, mem_mask, all_masked, head._state(fed["state"]))
        assert torch.equal(simple, head.binning.bin_centers[logits.argmax(-1)])
    finally:
        head.params.clear()
        head.params.update(saved)
    with torch.no_grad():  # a padded last step: the loss of the first three steps only
        valid = torch.tensor([[True, True, True, False]] * 2)
        layers = vlm["layers"]
        padded = head(context=layers, context_mask=vlm["mask"], state=fed["state"], target=case["actions"],
                      mask=valid, mask_noise=case["mask_noise"])["loss"]
        full = head(context=layers, context_mask=vlm["mask"], state=fed["state"], target=case["actions"],
                    mask=torch.ones(2, 4, dtype=torch.bool), mask_noise=case["mask_noise"])["loss"]
        logits = head.logits([m.repeat(2, 1, 1) for m in memories], mem_mask.repeat(2, 1),
                             head.apply_mask(bins, case["mask_noise"]), head._state(fed["state"].repeat(2, 1)))
        expected = head.loss(logits[:, :3], bins[:, :3], head.apply_mask(bins, case["mask_noise"])[:, :3] == -100,
                             case["actions"].repeat(2, 1, 1)[:, :3])
    assert abs(full.item() - case["loss"].item()) <= TOL
    assert abs(padded.item() - expected.item()) <= 1e-5 and abs(padded.item() - full.item()) > 1e-4


def test_training_graph_and_policy_run_and_the_packaged_graphs_compile_at_full_size(graph):
    """The compiled training stream draws its own masks (finite loss); the packaged graphs are
    Qwen3-VL-4B / Qwen2.5-VL-3B with a 36-block DiT at the VLM's width, with starVLA's parameter counts."""
    obs = observation()
    batch = {**obs, "actions": load(FIXTURE, "case")["actions"], "actions_mask": torch.ones(2, 4, dtype=torch.bool)}
    graph.model.train()
    try:
        loss = graph.train["action"](**graph.feed(batch, "action"))["loss"]
        loss.backward()
    finally:
        graph.model.eval()
        graph.model.zero_grad(set_to_none=True)
    assert torch.isfinite(loss)
    # starVLA's own counts: its LayerwiseDiscreteDiffusionActionHead built on meta with the framework's
    # defaults for a 36-layer VLM of width 2560 (Qwen3-VL-4B) / 2048 (Qwen2.5-VL-3B), horizon 8
    starvla_counts = {2560: (3_334_948_096, 47_186_176), 2048: (2_135_281_920, 37_748_992)}  # parameters, buffers
    for path, width in ((GRAPH, 2560), (GRAPH_25, 2048)):
        cg = compile_graph(path)  # meta: the full-size VLM from the bundled config
        head = cg.model["head"]
        counts = (sum(p.numel() for p in head.parameters()), sum(b.numel() for b in head.buffers()))
        assert counts == starvla_counts[width], (path.name, counts)
        assert len(head.model.transformer_blocks) == 36 and head.model.proj_out_2.weight.shape == (256, width)
        assert head.model.transformer_blocks[0].attn1.to_k.weight.shape == (width, width)
        assert head.token_embedding.weight.shape == (257, width) and head.state_encoder.layer1.in_features == 7
    spec = copy.deepcopy(load_spec(str(GRAPH)).data)
    spec["blocks"]["head"]["with"].update(representation="bit", num_bins=128)
    with pytest.raises(SpecError, match="num_bins"):
        compile_graph(spec)


# --- a trained discrete-diffusion run: served sessions with real-time chunking, export (tiny graph) ---

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """tiny/discrete-diffusion trained two steps by the trainer (its own checkpoint); 2 decoding rounds
    so that tracing the export stays short."""
    from vlm_samples import VLMSamples, vlm_bundle

    from graphvla.runners.train import Trainer

    root = tmp_path_factory.mktemp("dd-run")
    torch.manual_seed(0)
    spec = load_spec("tiny/discrete-diffusion", ["trainer.max_steps=2", "trainer.batch_size=2", "trainer.warmup_steps=1",
                                                 "trainer.num_workers=0", "trainer.save_every=100",
                                                 "blocks.head.with.num_steps=2"])
    Trainer.from_spec(spec, vlm_bundle(VLMSamples()), root / "run", progress=False).run()
    return root


def tiny_obs(t=0) -> dict:
    rng = np.random.default_rng(t)
    return {"images": rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8), "instruction": "push the puck",
            "state": rng.standard_normal(4).astype(np.float32)}


def bins_of(policy, actions):
    """Actions in dataset units -> the index of their bin (256 over [-1, 1], normalized as the head sees them)."""
    x = np.asarray(policy._unnormalize.normalize_array("actions", np.asarray(actions, dtype=np.float32)))
    return np.floor((np.clip(x, -1 + 1e-6, 1 - 1e-6) + 1) / 2 * 256)


def test_a_served_session_of_a_trained_run_inpaints_the_previous_chunk(tiny_run):
    """load_policy on the run: a session's chunks are reproducible from its seed; with RTC the steps of
    the previous chunk that overlap (the committed ones and the rest of the overlap: every step with a
    weight > 0) come back in their bins, the others are decoded; the same over the wire."""
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServeOptions, ServerThread

    policy = load_policy(tiny_run / "run")
    a, b = policy.new_session(3), policy.new_session(3)
    first = policy.infer(tiny_obs(0), a)["actions"]
    assert np.array_equal(first, policy.infer(tiny_obs(0), b)["actions"]) and first.shape == (8, 4)  # the session's draws
    out = policy.infer({**tiny_obs(1), RTC_KEY: {"delay": 2, "executed": 3}}, a)
    assert out["rtc"] == {"applied": True, "method": "inpainting", "delay": 2, "overlap": 5}
    np.testing.assert_array_equal(bins_of(policy, out["actions"][:5]), bins_of(policy, first[3:]))
    # remaining actions in other bins than the run decodes (two training steps: it answers one bin)
    normalized = np.random.default_rng(1).uniform(-0.9, 0.9, (4, 4)).astype(np.float32)
    remaining = policy._unnormalize({"actions": torch.from_numpy(normalized)[None]})["actions"][0].numpy()
    plain = policy.infer(tiny_obs(1), b)["actions"]
    assert (bins_of(policy, plain[:4]) != bins_of(policy, remaining)).mean() > 0.9
    with ServerThread(policy, ServeOptions(port=0)) as srv:
        with PolicyClient(srv.host, srv.port) as client:
            assert client.metadata["rtc"]["method"] == "inpainting"
            client.infer(tiny_obs(0))
            reply = client.infer({**tiny_obs(1), RTC_KEY: {"delay": 1, "remaining_actions": remaining}})
            assert reply["rtc"]["applied"] and reply["rtc"]["overlap"] == 4
            np.testing.assert_array_equal(bins_of(policy, reply["actions"][:4]), bins_of(policy, remaining))
            reply = client.infer({**tiny_obs(2), RTC_KEY: {"delay": 0, "executed": 2}})
            assert reply["rtc"]["applied"] is False  # delay 0: nothing committed, plain decoding


def test_the_run_exports_with_its_draws_as_an_input(tiny_run):
    """The decoding rounds unroll into the exported graph; its `noise` input is drawn per session as
    the checkpoint draws it (the manifest says which kind), so seeded sessions get the same actions."""
    from graphvla.policy.loading import load_policy
    from graphvla.runners.export import export_policy
    from graphvla.runners.exported import load_exported

    policy = load_policy(tiny_run / "run")
    ex = load_exported(export_policy(tiny_run / "run", tiny_run / "exported"))
    noise = [d for d in ex.manifest["inputs"] if d["name"] == "noise"]
    assert noise[0]["shape"] == ["batch", 2, 8, 4, 257] and noise[0]["distribution"] == "maskgit-exponential"
    obs = [tiny_obs(5), tiny_obs(6)]
    eager = policy.infer_batch(obs, sessions=[policy.new_session(10), policy.new_session(11)])
    exported = ex.infer_batch(obs, sessions=[ex.new_session(10), ex.new_session(11)])
    other = ex.infer_batch(obs, sessions=[ex.new_session(12), ex.new_session(13)])
    assert max(float(np.abs(x["actions"] - y["actions"]).max()) for x, y in zip(eager, exported)) <= 1e-5
    assert max(float(np.abs(x["actions"] - y["actions"]).max()) for x, y in zip(eager, other)) > 1e-3


# --- graphvla import starvla: a QwenDiscreteDiffusion checkpoint as starVLA's trainer writes it -------

CKPT_FIXTURE = FIXTURES / "qwendd_ckpt"  # scripts/parity/starvla_dd_ckpt.py
IMPORT_TOL = 1e-4


def expected():
    from starvla_ckpt import expected as of

    return of(CKPT_FIXTURE)


def starvla_run(tmp_path) -> Path:
    """The trainer's folder with its weights file rebuilt from the parity fixture's state as the script
    wrote it (the fixture keeps only its sha256): byte for byte the file starVLA loaded."""
    from starvla_ckpt import starvla_run as rebuilt

    return rebuilt(CKPT_FIXTURE, tmp_path / "starvla-run")


def test_imported_run_serves_starvlas_actions(tmp_path):
    """load_policy on the imported run, given the draws starVLA's predict_action made, serves what
    starVLA served (from_pretrained + predict_action + FrameworkTools.unnormalize_actions) within 1e-4;
    every tensor of the checkpoint is in the run; a session (its own draws) with RTC works on it; a
    config the head cannot represent is refused naming the field."""
    import yaml

    from graphvla.policy.loading import load_policy
    from graphvla.runners.importers.starvla import StarVLAImportError, import_starvla

    d = starvla_run(tmp_path)
    run = import_starvla(d, tmp_path / "run", base_vlm=FIXTURE / "vlm", image_size=64)
    meta, data = expected()
    info = json.loads((run / "imported.json").read_text())
    policy = load_policy(run)
    weights = load_file(str(d / meta["checkpoint"][len("ckpt/"):]))
    assert info["framework"] == "QwenDiscreteDiffusion" and info["graph"] == "starvla/qwen3vl-discrete-diffusion"
    assert info["tensors"] == len(weights) == len(policy.cg.model.state_dict())
    obs = [{"images": data["images"][i].numpy(), "instruction": meta["instructions"][i], "state": data["state"][i].numpy()}
           for i in range(len(meta["instructions"]))]
    noise = load(FIXTURE, "case_predict")["noise"]
    actions = np.stack([o["actions"] for o in policy.infer_batch(obs, noise=noise)])
    diff = np.abs(actions - data["actions"].numpy()).max()
    print(f"imported run vs starVLA served actions: max |diff| {diff:.2e}")
    assert actions.shape == tuple(data["actions"].shape) and diff <= IMPORT_TOL
    other = np.stack([o["actions"] for o in policy.infer_batch(obs, noise=noise.roll(1, dims=0))])
    assert np.abs(other - data["actions"].numpy()).max() > 100 * IMPORT_TOL  # the draws matter
    session = policy.new_session(4)
    first = policy.infer(obs[0], session)["actions"]
    again = policy.infer({**obs[1], RTC_KEY: {"delay": 1, "executed": 2}}, session)
    assert again["rtc"]["applied"] and again["rtc"]["method"] == "inpainting" and np.isfinite(again["actions"]).all()
    assert first.shape == again["actions"].shape == (meta_of()["horizon"], meta_of()["action_dim"])
    # starVLA's own training file (starvla_train_discrete_diffusion.yaml) says action_model_type DiT-B and
    # sizes the DiT in diffusion_model_cfg; QwenDiscreteDiffusion ignores both (its head follows the VLM)
    d = starvla_run(tmp_path / "dit-b")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["framework"]["action_model"].update(action_model_type="DiT-B", hidden_size=1024, inpainting_mask=False)
    cfg["framework"]["action_model"]["diffusion_model_cfg"].update(num_layers=12, num_attention_heads=32, output_dim=256,
                                                                   attention_head_dim=64, norm_type="ada_norm")
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    again = load_policy(import_starvla(d, tmp_path / "dit-b" / "run", base_vlm=FIXTURE / "vlm", image_size=64))
    same = np.stack([o["actions"] for o in again.infer_batch(obs, noise=noise)])
    assert np.array_equal(same, actions)
    for i, (edit, message) in enumerate([
        (lambda c: c["framework"]["action_model"].update(representation="bytes"), r"representation is 'bytes'"),
        (lambda c: c["framework"]["action_model"]["diffusion_model_cfg"].update(positional_embeddings=None),
         r"diffusion_model_cfg\.positional_embeddings is None"),
        (lambda c: c["framework"]["action_model"].update(decode_schedule="exp"), r"decode_schedule is 'exp'"),
    ]):
        d = starvla_run(tmp_path / str(i))
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        edit(cfg)
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(StarVLAImportError, match=message):
            import_starvla(d, tmp_path / str(i) / "run", base_vlm=FIXTURE / "vlm", image_size=64)
        assert not (tmp_path / str(i) / "run").exists()
