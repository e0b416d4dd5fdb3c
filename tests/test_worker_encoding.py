"""The blocks' data work (backbone.hf_vlm's processor and chat template, fast.encode's and
head.fast's FAST BPE, glue.state_text's prompt, encoder.text's bytes) is declared as processor
steps: the preprocess pipeline makes the tensors, in the DataLoader workers and in `Policy`, and
the compiled graphs take them as inputs. What the pipeline makes equals the tokenizer/processor
called directly on the same samples; training gives the same losses and weights wherever the
pipeline runs, with no processor or BPE call in the training process when it runs in workers."""
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from graphvla.processors.fast_tokenizer import FASTTokenizer
from graphvla.compiler.compile import compile_graph
from graphvla.data.api import collate
from graphvla.data.normalize import Normalizer
from graphvla.processors import hf_vlm as vlm_step
from graphvla.processors.base import Pipeline, StepError
from graphvla.runners.train import Trainer
from graphvla.runners.train import dataio
from graphvla.spec.loader import load_spec
from vlm_samples import VLMSamples, vlm_bundle

TINY = Path(__file__).parent.parent / "graphvla" / "graphs" / "tiny"
STEPS = 3
warnings.filterwarnings("ignore")


class TailSamples(VLMSamples):
    """Some chunks end early (mask False on their last steps): FAST must see them held at the last
    valid action, after the normalizer zeroed them."""

    def __getitem__(self, i):
        sample = super().__getitem__(i)
        sample["actions_mask"] = torch.arange(8) < 8 - 3 * (i % 3)
        return sample


def _spec(graph, *more):
    return load_spec(str(TINY / f"{graph}.yaml"), [f"trainer.max_steps={STEPS}", "trainer.batch_size=2",
                                                   "trainer.warmup_steps=1", "trainer.num_workers=1",
                                                   "trainer.save_every=100", *more])


def _train_counting_main_process_calls(tmp_path, graph, monkeypatch, in_workers):
    torch.manual_seed(0)
    t = Trainer.from_spec(_spec(graph), vlm_bundle(TailSamples()), tmp_path / f"{graph}-{in_workers}", progress=False,
                          encode_in_workers=in_workers)
    calls = {"processor": 0, "bpe": 0}  # counted in this process only: a worker's calls happen in its own
    processor, bpe = vlm_step.encode_cpu, FASTTokenizer.encode

    def counting_processor(*args, **kwargs):
        calls["processor"] += 1
        return processor(*args, **kwargs)

    def counting_bpe(*args, **kwargs):
        calls["bpe"] += 1
        return bpe(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(vlm_step, "encode_cpu", counting_processor)
        m.setattr(FASTTokenizer, "encode", counting_bpe)
        history = t.run().history
    return [r["loss"] for r in history], calls, t


@pytest.mark.parametrize("graph", ["querytf", "fast", "fast-lm"])
def test_data_work_runs_in_the_workers_with_the_same_losses_and_weights(tmp_path, monkeypatch, graph):
    before, in_step, t0 = _train_counting_main_process_calls(tmp_path, graph, monkeypatch, in_workers=False)
    after, in_main, t1 = _train_counting_main_process_calls(tmp_path, graph, monkeypatch, in_workers=True)
    fast = graph != "querytf"
    assert in_step == {"processor": STEPS, "bpe": STEPS if fast else 0}  # the pipeline ran in the step
    assert in_main == {"processor": 0, "bpe": 0}  # the step receives tensors
    assert after == before  # the same computation, wherever it runs: exactly equal
    w0, w1 = t0.cg.model.state_dict(), t1.cg.model.state_dict()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # so were the gradients


def _collated(cg, ds, n=3):
    """The training collate's batch (normalization, then the blocks' steps) of samples 0..n-1."""
    norm = Normalizer(vlm_bundle(ds).stats, dict(cg.spec.section("trainer").get("normalization") or {}))
    preprocess, _ = dataio.pipelines(cg, norm)
    samples = [ds[i] for i in range(n)]
    return dataio.WorkerCollate(collate, preprocess)(samples), samples, norm, preprocess


def _bins(state, lo, hi, bins=256):
    """glue.state_text's rule, by hand: clip to [-1, 1] after q01_q99 scaling, 256 equal bins."""
    unit = ((state - (lo + hi) / 2) / ((hi - lo) / 2)).clamp(-1, 1)
    return [" ".join(str(min(int((float(v) + 1) / 2 * bins), bins - 1)) for v in row) for row in unit]


def test_the_pipeline_makes_what_the_tokenizer_and_processor_make_called_directly():
    """tiny/fast-lm: the prompt with the state's bins, the processor's tensors of that prompt and
    the image, and fast.encode's tokens of the held chunk, each against a direct call."""
    ds = TailSamples()
    cg = compile_graph(_spec("fast-lm"), device="cpu")
    batch, samples, norm, _ = _collated(cg, ds)
    stats = norm.stats["state"]
    lo, hi = torch.tensor(stats["q01"]).float(), torch.tensor(stats["q99"]).float()
    state = torch.stack([s["state"] for s in samples])
    prompts = [f"{s['instruction']}, State: {b};" for s, b in zip(samples, _bins(state, lo, hi))]
    assert batch["prompt.text"] == prompts

    processor = cg.model["vlm"].processor
    chats = [processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
        chat_template=processor.chat_template, add_generation_prompt=True, tokenize=False) for p in prompts]
    images = torch.stack([s["images"] for s in samples])
    direct = processor(text=chats, images=[list(row) for row in images], return_tensors="pt", padding=True,
                       do_rescale=False)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
        made = batch[f"vlm.{key}"]
        assert made.shape[0] == len(samples)  # batch first, so rows can be cut and stacked
        assert torch.equal(made.reshape(direct[key].shape), direct[key]), key

    tokenizer = cg.model["action_tokens"].tokenizer
    actions = norm.normalize({"actions": torch.stack([s["actions"] for s in samples])})["actions"]
    for i, s in enumerate(samples):
        valid = int(s["actions_mask"].sum())
        held = torch.cat([actions[i, :valid], actions[i, valid - 1:valid].expand(8 - valid, -1)])
        want = tokenizer.encode(held[None].numpy())[0]
        row = batch["action_tokens.tokens"][i].tolist()
        assert row[:len(want)] == want and all(t == -1 for t in row[len(want):])


def test_graphs_take_the_step_made_tensors_and_inference_needs_no_targets():
    cg = compile_graph(_spec("fast-lm"), device="cpu")
    train = [n.target for n in cg.train["action"].graph.nodes if n.op == "placeholder"]
    infer = [n.target for n in cg.infer.graph.nodes if n.op == "placeholder"]
    assert "action_tokens_tokens" in train and "vlm_input_ids" in train and "vlm_pixel_values" in train
    assert "vlm(target_tokens = action_tokens_tokens_1, input_ids = vlm_input_ids" in cg.train["action"].code
    assert not [p for p in infer if p.startswith("action_tokens")] and "vlm_input_ids" in infer
    assert "images" not in infer and "instruction" not in infer  # the steps read them, the graph does not
    # steps in graph order: the VLM's step reads the prompt that glue.state_text's step makes
    blocks = [s.block for s in cg.preprocess if s.block]
    assert blocks.index("prompt") < blocks.index("vlm") and cg.preprocess.steps[-1].sources["text"] == "prompt.text"


def test_training_collate_and_policy_give_the_vlm_the_same_tensors(tmp_path):
    """The same frames through the training collate and through Policy's preprocess: identical
    inputs of the inference graph (querytf: the VLM's processor tensors and the state)."""
    from graphvla.policy.policy import Policy

    ds = TailSamples()
    cg = compile_graph(_spec("querytf"), device="cpu")
    batch, samples, norm, _ = _collated(cg, ds)
    seen = {}
    policy = Policy(cg, norm)
    original = policy._infer

    def spy(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    policy._infer = spy
    policy.infer_batch([{k: v for k, v in s.items() if k not in ("actions", "actions_mask")} for s in samples])
    assert {"vlm_input_ids", "vlm_pixel_values", "state"} <= set(seen)
    for name, value in seen.items():
        if name.startswith("vlm_") or name == "state":
            key = name.replace("_", ".", 1) if name.startswith("vlm_") else name
            assert torch.equal(value.cpu(), batch[key]), name


def test_saved_steps_load_without_the_blocks_and_make_the_same_tensors(tmp_path):
    ds = TailSamples()
    cg = compile_graph(_spec("fast-lm"), device="cpu")
    _, samples, _, preprocess = _collated(cg, ds)
    preprocess.save(tmp_path)
    assert (tmp_path / "preprocess" / "3-hf_vlm_processor" / "tokenizer_config.json").exists()
    assert (tmp_path / "preprocess" / "2-fast_tokens" / "tokenizer.json").exists()
    loaded = Pipeline.load(tmp_path, "preprocess")
    assert [s.kind for s in loaded] == [s.kind for s in preprocess]
    a, b = preprocess(collate(samples)), loaded(collate(samples))
    assert set(a) == set(b)
    for k in a:
        assert (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]), k
    step = pickle.loads(pickle.dumps(preprocess.steps[2]))  # what a DataLoader worker gets
    assert step == preprocess.steps[2] and torch.equal(step(a)["action_tokens.tokens"], a["action_tokens.tokens"])


def test_a_failing_step_names_its_block_port_and_sample():
    ds = TailSamples()
    cg = compile_graph(_spec("fast"), device="cpu")
    _, samples, _, preprocess = _collated(cg, ds)
    samples[1] = {**samples[1], "actions": samples[1]["actions"].clone()}
    samples[1]["actions"][2, 1] = float("nan")
    with pytest.raises(StepError) as e:
        preprocess(collate(samples))
    msg = str(e.value)
    assert "head" in msg and "actions" in msg and "sample 1" in msg and "NaN" in msg


def test_a_row_cut_from_a_batch_gives_the_vlm_what_it_gets_alone():
    """Every port the VLM's step makes is batch first, and the block cuts the token columns to the
    longest row: row i of a batch gives exactly the outputs of sample i encoded alone (what the
    every-k caches rely on). Generation pads on the left as the processor would."""
    from graphvla.blocks.backbones.hf_vlm import left_padded

    cg = compile_graph(_spec("querytf"), device="cpu")
    vlm = cg.model["vlm"].eval()
    step = cg.preprocess.steps[-1]
    images = torch.rand(2, 1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    texts = ["reach", "push the puck to the goal slowly"]
    both = step.run(images=images, text=texts)
    alone = step.run(images=images[:1], text=texts[:1])
    row = {k: v[:1] for k, v in both.items()}
    assert row["input_ids"].shape[1] > alone["input_ids"].shape[1]  # padded in the batch
    with torch.no_grad():
        a, b = vlm(**row), vlm(**alone)
    assert torch.equal(a["hidden"], b["hidden"]) and torch.equal(a["mask"], b["mask"])
    processor = vlm.processor
    left = vlm_step.encode_cpu(processor, images, texts, padding_side="left")
    made = left_padded(vlm.model_inputs(both))
    assert set(made) == set(left)
    for key in left:  # the token columns re-padded, the image tensors as they were
        assert torch.equal(made[key], left[key]), key


def test_a_saved_pipeline_loads_without_importing_a_block(tmp_path):
    import subprocess
    import sys

    cg = compile_graph(_spec("fast-lm"), device="cpu")
    _, _, _, preprocess = _collated(cg, TailSamples())
    preprocess.save(tmp_path)
    code = ("import sys; from graphvla.processors.base import Pipeline; "
            f"p = Pipeline.load({str(tmp_path)!r}, 'preprocess'); "
            "print(','.join(s.kind for s in p), any(m.startswith('graphvla.blocks') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [",".join(s.kind for s in preprocess), "False"]


def test_a_step_wired_to_a_value_the_graph_computes_is_a_compile_error():
    from graphvla.errors import SpecError

    with pytest.raises(SpecError) as e:
        compile_graph("tiny/fast", ["blocks.guess={type: head.mlp, in: {context: vlm.hidden, target: inputs.actions}}",
                                    "blocks.head.in.target=guess.actions", "losses.guess={from: guess.loss}"])
    msg = str(e.value)
    assert "blocks.head.in.target" in msg and "edge guess.actions -> head.target" in msg
    assert "processor step reads 'target' before the graph runs" in msg


@pytest.mark.parametrize("graph, node", [("tiny/mlp", "language"), ("tiny/worldmodel-flowdit", "wm")])
def test_a_row_cut_from_a_batch_of_bytes_is_the_row_tokenized_alone(graph, node):
    cg = compile_graph(graph, device="cpu")
    block = cg.model[node].eval()
    size = cg.spec.inputs["images"]["size"]
    images = torch.rand(2, 1, 3, *size, generator=torch.Generator().manual_seed(0))
    texts = ["go", "push the puck to the far goal"]
    extra = {} if node == "language" else {"images": images[:1]}
    step = cg.preprocess.steps[-1]
    both, alone = step.run(text=texts)["ids"], step.run(text=texts[:1])["ids"]
    assert both.shape[1] > alone.shape[1]
    with torch.no_grad():
        a, b = block(ids=both[:1], **extra), block(ids=alone, **extra)
    assert torch.equal(a["hidden"], b["hidden"]) and torch.equal(a["mask"], b["mask"])


def test_on_meta_the_steps_describe_themselves_and_refuse_to_run():
    """`graphvla compile` (meta) reads no tokenizer, yet lists every step; running one names its block."""
    cg = compile_graph("tiny/fast-lm")
    assert [s.block for s in cg.preprocess if s.block] == ["prompt", "action_tokens", "vlm"]
    fast = cg.preprocess.steps[2]
    with pytest.raises(RuntimeError, match="block 'action_tokens': its FAST tokenizer was not loaded"):
        fast({"actions": torch.zeros(1, 8, 4)})
