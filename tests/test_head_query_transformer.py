"""head.query_transformer: overfits, reads the chosen context layer, respects the context mask, and (being an L1
regressor) gives one answer per context where the data is bimodal."""
import pytest
import torch

from graphvla.blocks.base import BuildContext, ParamError, PortInfo
from graphvla.blocks.heads.query_transformer import QueryTransformerHead

N, T, D, H, A = 16, 6, 16, 4, 2



def make_head(params, context_shape=(N, T, D), with_state=False, with_mask=False):
    infos = {"context": PortInfo("layers" if len(context_shape) == 4 else "hidden", context_shape),
             "target": PortInfo("action", (context_shape[0], H, A))}
    if with_state:
        infos["state"] = PortInfo("state", (context_shape[0], 5))
    if with_mask:
        infos["context_mask"] = PortInfo("mask", (context_shape[0], context_shape[-2]))
    return QueryTransformerHead(params, infos, BuildContext("head"))


def fit(head, steps, lr, **batch):
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = head(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("seed", [0, 1])
def test_overfits_fixed_dataset(seed):
    torch.manual_seed(seed)
    context, state = torch.randn(N, T, D), torch.randn(N, 5)
    target = torch.randn(N, H, A).cumsum(1) * 0.5
    head = make_head({"width": 32, "layers": 1}, with_state=True)
    losses = fit(head, 250, 3e-3, context=context, state=state, target=target)
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    print(f"query_transformer L1 {first:.3f} -> {last:.4f} ({first / last:.0f}x)")
    assert first / last >= 10
    with torch.no_grad():
        pred = head.predict(context=context, state=state)["actions"]
    assert pred.shape == (N, H, A)
    assert (pred - target).abs().mean() < 0.1 * target.abs().mean()


def test_layers_context_reads_the_chosen_layer():
    torch.manual_seed(0)
    head = make_head({"width": 32, "layers": 1, "layer": 1}, context_shape=(N, 3, T, D)).eval()
    context = torch.randn(N, 3, T, D)
    other = context.clone()
    other[:, [0, 2]] = torch.randn(N, 2, T, D)
    changed = context.clone()
    changed[:, 1] += torch.randn(N, T, D)
    with torch.no_grad():
        a, b, c = (head.predict(context=x)["actions"] for x in (context, other, changed))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3
    with pytest.raises(ParamError) as e:
        make_head({"layer": 3}, context_shape=(N, 3, T, D))
    assert e.value.key == "layer"


def test_masked_context_tokens_are_ignored():
    torch.manual_seed(0)
    head = make_head({"width": 32, "layers": 2}, with_mask=True).eval()
    context = torch.randn(N, T, D)
    mask = torch.ones(N, T, dtype=torch.bool)
    mask[:, -2:] = False
    noisy = context.clone()
    noisy[:, -2:] = torch.randn(N, 2, D) * 5
    with torch.no_grad():
        a = head.predict(context=context, context_mask=mask)["actions"]
        b = head.predict(context=noisy, context_mask=mask)["actions"]
        c = head.predict(context=noisy)["actions"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (a - c).abs().max() > 1e-3


def test_action_mask_excludes_padded_steps():
    torch.manual_seed(0)
    head = make_head({"width": 32, "layers": 1})
    context, target = torch.randn(N, T, D), torch.randn(N, H, A)
    mask = torch.ones(N, H, dtype=torch.bool)
    mask[:, -1] = False
    wild = target.clone()
    wild[:, -1] = 100.0
    torch.testing.assert_close(head(context=context, target=target, mask=mask)["loss"],
                               head(context=context, target=wild, mask=mask)["loss"])


def test_bimodal_targets_give_a_single_answer_between_the_modes():
    """Same context, target chunk all +1 or all -1 with p=0.5. L1 regression has one output per
    context, so it can never produce both modes; it sits in [-1, 1] (every point there is an L1
    minimizer, so which one depends on the seed) at an L1 loss of 1."""
    torch.manual_seed(0)
    b = 32
    head = make_head({"width": 32, "layers": 1}, context_shape=(b, 4, 8))
    context = torch.randn(1, 4, 8).expand(b, -1, -1)
    sign = torch.tensor([1.0, -1.0]).repeat(b // 2)[:, None, None].expand(b, H, A)
    losses = fit(head, 150, 3e-3, context=context, target=sign)
    with torch.no_grad():
        pred = head.predict(context=context[:1])["actions"]
    print(f"query_transformer on bimodal +-1 data predicts {pred.flatten().tolist()}; final L1 {losses[-1]:.3f}")
    assert pred.abs().max() <= 1.05  # every value between the modes (each is an L1 minimizer)
    # any single answer in [-1, 1] costs L1 = 1 on this data: regression cannot do better
    assert sum(losses[-10:]) / 10 > 0.95
