"""head.flow_matching: overfits, recovers a bimodal action distribution (where L1 regression
cannot), is deterministic given its starting noise, maps DiT layers onto context layers."""
import pytest
import torch

from graphvla.blocks.base import BuildContext, ParamError, PortInfo
from graphvla.blocks.heads.flow_matching import (FlowMatchingHead, default_layer_map, flow_matching_loss, initial_noise,
                                                 sample_time)
from graphvla.blocks.heads.mlp import MLPHead

N, T, D, H, A = 16, 6, 16, 4, 2


def seeded_noise(head, context, seed):
    """predict's starting noise for `context`'s batch, drawn from a generator seeded with `seed`."""
    return initial_noise(head.noise_shape(context.shape[0]), torch.Generator().manual_seed(seed), context.device,
                         torch.float32)


def make_head(params, context_shape=(N, T, D), horizon=H, action_dim=A, state_dim=None, cls=FlowMatchingHead):
    infos = {"context": PortInfo("layers" if len(context_shape) == 4 else "hidden", context_shape),
             "target": PortInfo("action", (context_shape[0], horizon, action_dim))}
    if state_dim:
        infos["state"] = PortInfo("state", (context_shape[0], state_dim))
    return cls(params, infos, BuildContext("head"))


def fit(head, steps, lr, batch_fn):
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = head(**batch_fn())["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_time_sampling_is_pi0_beta():
    torch.manual_seed(0)
    tau = sample_time(200_000, "cpu")
    assert 0 <= tau.min() and tau.max() <= 0.999
    # tau = 0.999 (1 - b), b ~ Beta(1.5, 1): E[b] = 0.6, so E[tau] = 0.3996; P(tau > 0.9) = (0.1/0.999)**1.5
    assert abs(tau.mean().item() - 0.999 * 0.4) < 0.005
    assert abs((tau > 0.9).float().mean().item() - (1 - 0.9 / 0.999) ** 1.5) < 0.005


@pytest.mark.parametrize("seed", [0, 1])
def test_overfits_fixed_dataset(seed):
    torch.manual_seed(seed)
    context, state = torch.randn(N, T, D), torch.randn(N, 3)
    target = torch.randn(N, H, A).cumsum(1) * 0.5
    head = make_head({"width": 32, "layers": 2, "noise_draws": 4}, state_dim=3)
    losses = fit(head, 300, 3e-3, lambda: {"context": context, "state": state, "target": target})
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    head.eval()
    with torch.no_grad():
        pred = head.predict(context=context, state=state, noise=seeded_noise(head, context, 0))["actions"]
    err = (pred - target).abs().mean().item()
    print(f"flow matching velocity MSE {first:.3f} -> {last:.4f} ({first / last:.0f}x); sampled chunk L1 error {err:.3f}")
    assert first / last >= 10
    assert err < 0.25 * target.abs().mean()  # an untrained sampler is off by about 1 (the noise)


def test_recovers_bimodal_distribution_where_regression_averages():
    """Same context, target chunk all +1 or all -1 with p=0.5: flow samples land near both modes
    and few in between; the L1 MLP head gives one value between the modes."""
    torch.manual_seed(0)
    b, h, a = 64, 2, 1
    one_context = torch.randn(1, 4, 8)
    context = one_context.expand(b, -1, -1)

    def batch():
        sign = torch.randint(0, 2, (b, 1, 1)).float() * 2 - 1
        return {"context": context, "target": sign.expand(b, h, a)}

    flow = make_head({"width": 32, "layers": 2, "noise_draws": 2}, (b, 4, 8), h, a)
    fit(flow, 300, 3e-3, batch)
    flow.eval()
    with torch.no_grad():
        many = one_context.expand(400, -1, -1)
        samples = flow.predict(context=many, noise=seeded_noise(flow, many, 1))["actions"]
    m = samples.mean(dim=(1, 2))
    near_plus, near_minus = ((m - 1).abs() < 0.3).float().mean().item(), ((m + 1).abs() < 0.3).float().mean().item()
    between = (m.abs() < 0.5).float().mean().item()
    print(f"flow samples: {near_plus:.2f} near +1, {near_minus:.2f} near -1, {between:.2f} within 0.5 of 0")
    assert near_plus > 0.3 and near_minus > 0.3
    assert near_plus + near_minus > 0.85
    assert between < 0.05

    mlp = make_head({"hidden": 32}, (b, 4, 8), h, a, cls=MLPHead)
    fit(mlp, 150, 3e-3, batch)
    with torch.no_grad():
        reg = mlp(context=one_context)["actions"].mean().item()
    print(f"L1 MLP head predicts {reg:+.3f} for every sample")
    assert -1.05 < reg < 1.05


def test_deterministic_given_noise_and_steps_matter():
    torch.manual_seed(0)
    head = make_head({"width": 32, "layers": 2}).eval()
    context = torch.randn(N, T, D)
    with torch.no_grad():
        a = head.predict(context=context, noise=seeded_noise(head, context, 3))["actions"]
        b = head.predict(context=context, noise=seeded_noise(head, context, 3))["actions"]
        c = head.predict(context=context, noise=seeded_noise(head, context, 4))["actions"]
        d = head.predict(context=context, noise=seeded_noise(head, context, 3), num_steps=2)["actions"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    assert (a - d).abs().max() > 1e-6  # a different number of Euler steps is a different integration


def test_layer_map():
    assert default_layer_map(4, 8) == [0, 2, 5, 7]
    assert default_layer_map(3, 1) == [0, 0, 0]
    assert default_layer_map(1, 6) == [5]
    torch.manual_seed(0)
    head = make_head({"width": 32, "layers": 2, "layer_map": [0, -1]}, context_shape=(N, 4, T, D)).eval()
    assert head.layer_map == [0, 3]
    context = torch.randn(N, 4, T, D)
    other = context.clone()
    other[:, 1:3] = torch.randn(N, 2, T, D)
    # a fresh DiT has zero adaLN gates; perturb them so every layer's cross-attention counts
    with torch.no_grad():
        for p in head.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        a = head.predict(context=context, noise=seeded_noise(head, context, 0))["actions"]
        b = head.predict(context=other, noise=seeded_noise(head, other, 0))["actions"]
        other[:, 3] += torch.randn(N, T, D)
        c = head.predict(context=other, noise=seeded_noise(head, other, 0))["actions"]
    torch.testing.assert_close(a, b)  # unmapped layers 1 and 2 do not matter
    assert (a - c).abs().max() > 1e-4
    for bad in ([0], [0, 4]):
        with pytest.raises(ParamError) as e:
            make_head({"layers": 2, "layer_map": bad}, context_shape=(N, 4, T, D))
        assert e.value.key == "layer_map"


def test_loss_masks_padded_steps_and_repeats_noise_draws():
    """With a velocity net that outputs zeros the loss is the masked mean of (actions - noise)**2
    over exactly the noise the loss drew, repeated `noise_draws` times per example."""
    class ZeroDiT:
        def memory_kv(self, memories):
            return [(m, m) for m in memories]

        def __call__(self, x, tau, memory_kv, pad, state):
            return torch.zeros_like(x)

    zero_dit = ZeroDiT()
    target = torch.randn(3, H, A)
    mask = torch.ones(3, H, dtype=torch.bool)
    mask[:, -1] = False
    torch.manual_seed(5)
    loss = flow_matching_loss(zero_dit, [torch.zeros(3, T, 8)], None, None, target, mask, noise_draws=2)
    torch.manual_seed(5)
    noise = torch.randn(6, H, A)
    err = (target.repeat_interleave(2, 0) - noise) ** 2
    torch.testing.assert_close(loss, err[:, :-1].mean())


def test_noise_of_the_wrong_shape_is_refused():
    torch.manual_seed(0)
    head = make_head({"width": 32, "layers": 1}).eval()
    context = torch.randn(N, T, D)
    with torch.no_grad():
        for bad in (torch.zeros(N, H, A + 1), torch.zeros(N - 1, H, A), torch.zeros(N, H * A)):
            with pytest.raises(ValueError, match=f"noise must be \\[batch, horizon, action dim\\] = \\[{N}, {H}, {A}\\]"):
                head.predict(context=context, noise=bad)


def test_noise_is_a_reserved_name():
    """`noise` is the inference graph's argument for a sampling head's starting noise: no input and
    no block may take the name."""
    from conftest import graph_text, spec_issues

    from graphvla import validate_graph

    text = graph_text("tiny/flowdit")
    issues = spec_issues(validate_graph, text.replace("\n  state:", "\n  noise:").replace("inputs.state", "inputs.noise"))
    assert any(i.message == "input name 'noise' is reserved; rename the input" for i in issues)
    issues = spec_issues(validate_graph, text.replace("\n  head:", "\n  noise:").replace("head.", "noise."))
    assert any("reserved" in i.message and i.block == "noise" for i in issues)
