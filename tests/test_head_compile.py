"""Every action head swaps into the same small-block graph by changing one block type: it compiles
on meta, trains one step through the compiled train graph and predicts [B, H, A] on CPU."""
import numpy as np
import pytest
import torch
from conftest import graph_text

import graphvla
from graphvla.processors.fast_tokenizer import FASTTokenizer

H, A = 6, 3
HEADS = {
    "head.mlp": "{hidden: 32}",
    "head.query_transformer": "{width: 32, layers: 1}",
    "head.flow_matching": "{width: 32, layers: 2, num_steps: 3}",
    "head.dual_system": "{width: 32, layers: 2, num_steps: 3}",
    "head.fast": "{tokenizer: tok, vocab_size: 128, width: 32, layers: 1}",
}



def spec(head_type):
    """tiny/mlp, smaller, with two camera views, a 5-d state and `head_type` as its head."""
    return graph_text(
        "tiny/mlp", f"name=tiny-{head_type.replace('.', '-').replace('_', '-')}",
        "inputs.images={kind: image, views: 2, size: [32, 32]}", "inputs.state.dim=5",
        f"inputs.actions={{kind: action, dim: {A}, horizon: {H}, train_only: true}}",
        "blocks.vision.with={width: 32, patch: 8, layers: 1}", "blocks.language.with.width=32",
        "blocks.fuse.in.b=language.hidden", "blocks.fuse.with.width=32",
        f"blocks.head={{type: {head_type}, in: {{context: fuse.hidden, state: inputs.state, target: inputs.actions}}, "
        f"with: {HEADS[head_type]}}}")


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("specs")
    rng = np.random.default_rng(0)
    chunks = np.cumsum(rng.normal(size=(500, H, A)) * 0.1, axis=1)
    FASTTokenizer(H, A, scale=10, vocab_size=128).fit(chunks).save(d / "tok")
    for head_type in HEADS:
        (d / f"{head_type}.yaml").write_text(spec(head_type))
    return d


@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_head_compiles_on_meta(head_type, spec_dir):
    cg = graphvla.compile_graph(spec_dir / f"{head_type}.yaml")
    assert cg.shapes[("head", "actions")] == ("B", H, A)
    assert cg.shapes[("head", "loss")] == ()
    total, trainable = cg.param_counts()["head"]
    assert total == trainable > 0
    assert all(p.device.type == "meta" for p in cg.model["head"].parameters())


@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_head_trains_and_predicts_through_compiled_graph(head_type, spec_dir):
    torch.manual_seed(0)
    cg = graphvla.compile_graph(spec_dir / f"{head_type}.yaml", device="cpu")
    b = 3
    batch = {"images": torch.rand(b, 2, 3, 32, 32), "instruction": ["pick", "place the cup", "open"],
             "state": torch.randn(b, 5), "actions": torch.cumsum(torch.randn(b, H, A) * 0.1, dim=1)}
    out = cg.train["action"](**cg.feed(batch, "action"))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in cg.model["head"].parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert cg.model["vision"].patch_embed.weight.grad is not None  # the loss reaches the backbone
    cg.model.eval()
    with torch.no_grad():
        obs = {k: v for k, v in batch.items() if k != "actions"}
        pred = cg.infer(**cg.feed(obs))["actions"]
    assert pred.shape == (b, H, A) and torch.isfinite(pred).all()
