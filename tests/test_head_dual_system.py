"""head.dual_system (GR00T): overfits; through a compiled small-block graph, System-2 features
cached with `infer: {every: k}` give exactly the actions that recomputing them gives."""
import torch
from conftest import graph_text

import graphvla
from graphvla.blocks.base import BuildContext, PortInfo
from graphvla.blocks.heads.dual_system import DualSystemHead
from graphvla.blocks.heads.flow_matching import initial_noise
from graphvla.policy.caches import CallRows, cached_infer, reset_caches

N, T, D, H, A = 16, 6, 16, 4, 2


def seeded_noise(seed, batch=2):
    """The head's starting noise [batch, H, A], drawn from a generator seeded with `seed`."""
    return initial_noise((batch, H, A), torch.Generator().manual_seed(seed), torch.device("cpu"), torch.float32)


def spec(every: int) -> str:
    """tiny/mlp, smaller, with a 5-d state and a head.dual_system; System 2 (the encoders and the
    fusion) runs every `every` calls."""
    infer = [f"blocks.{b}.infer={{every: {every}}}" for b in ("vision", "language", "fuse")] if every > 1 else []
    return graph_text(
        "tiny/mlp", "name=tiny-dual", "inputs.images.size=[32, 32]", "inputs.state.dim=5",
        f"inputs.actions={{kind: action, dim: {A}, horizon: {H}, train_only: true}}",
        "blocks.vision.with={width: 32, patch: 8, layers: 1}", "blocks.language.with.width=32",
        "blocks.fuse.in={a: vision.hidden, b: language.pooled}", "blocks.fuse.with.width=32",
        "blocks.head={type: head.dual_system, in: {context: fuse.hidden, state: inputs.state, target: inputs.actions}, "
        "with: {width: 32, heads: 4, layers: 2, num_steps: 4}}", *infer)


def observation(seed, b=2):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(b, 1, 3, 32, 32, generator=g), "instruction": ["pick the cube", "open drawer"][:b],
            "state": torch.randn(b, 5, generator=g)}


def test_overfits_fixed_dataset():
    torch.manual_seed(0)
    infos = {"context": PortInfo("hidden", (N, T, D)), "state": PortInfo("state", (N, 3)),
             "target": PortInfo("action", (N, H, A))}
    head = DualSystemHead({"width": 32, "layers": 2, "noise_draws": 4}, infos, BuildContext("head"))
    context, state = torch.randn(N, T, D), torch.randn(N, 3)
    target = torch.randn(N, H, A).cumsum(1) * 0.5
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = head(context=context, state=state, target=target)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    head.eval()
    with torch.no_grad():
        pred = head.predict(context=context, state=state, noise=seeded_noise(0, N))["actions"]
    err = (pred - target).abs().mean().item()
    print(f"dual system velocity MSE {first:.3f} -> {last:.4f} ({first / last:.0f}x); sampled chunk L1 error {err:.3f}")
    assert first / last >= 10
    assert err < 0.25 * target.abs().mean()  # an untrained sampler is off by about 1 (the noise)


def test_same_system2_features_same_actions():
    """The head is stateless: given the same System-2 features and starting noise it returns the
    same actions, however often it is called."""
    torch.manual_seed(0)
    cg = graphvla.compile_graph(spec(1), device="cpu")
    cg.model.eval()
    with torch.no_grad():  # non-zero adaLN gates, so the features matter
        for p in cg.model["head"].parameters():
            p.add_(torch.randn_like(p) * 0.05)
    obs = observation(0)
    with torch.no_grad():
        runs = [cg.infer(**cg.feed(obs), noise=seeded_noise(7))["actions"] for _ in range(3)]
        other_seed = cg.infer(**cg.feed(obs), noise=seeded_noise(8))["actions"]
    assert runs[0].shape == (2, H, A)
    for r in runs[1:]:
        torch.testing.assert_close(r, runs[0], rtol=0, atol=0)
    assert (other_seed - runs[0]).abs().max() > 1e-4


def test_cached_system2_matches_recomputed():
    torch.manual_seed(0)
    cached = graphvla.compile_graph(spec(3), device="cpu")
    fresh = graphvla.compile_graph(spec(1), device="cpu")
    with torch.no_grad():  # a fresh DiT has zero adaLN gates (ignores state and context): wake them up
        for p in cached.model["head"].parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fresh.model.load_state_dict(cached.model.state_dict())
    cached.model.eval()
    fresh.model.eval()
    runtime = cached_infer(cached, CallRows())  # the every-k caches as the Policy runs them
    obs, other = cached.feed(observation(0)), cached.feed(observation(1))  # the graph's arguments
    with torch.no_grad():
        reset_caches(runtime)
        with_cache = [runtime(**obs, noise=seeded_noise(11))["actions"] for _ in range(3)]
        recomputed = fresh.infer(**obs, noise=seeded_noise(11))["actions"]
        for a in with_cache:
            torch.testing.assert_close(a, recomputed, rtol=0, atol=0)
        # inside the cache window System 2 is not rerun: a new image/instruction is not seen yet ...
        reset_caches(runtime)
        runtime(**obs, noise=seeded_noise(11))
        stale = runtime(**{**other, "state": obs["state"]}, noise=seeded_noise(11))["actions"]
        torch.testing.assert_close(stale, recomputed, rtol=0, atol=0)
        # ... while the state goes straight to System 1 on every call
        new_state = runtime(**{**obs, "state": other["state"]}, noise=seeded_noise(11))["actions"]
        assert (new_state - recomputed).abs().max() > 1e-5
        # after k calls (or a reset) System 2 sees the new observation
        reset_caches(runtime)
        torch.testing.assert_close(runtime(**other, noise=seeded_noise(11))["actions"],
                                   fresh.infer(**other, noise=seeded_noise(11))["actions"], rtol=0, atol=0)
        # the compiled graph itself keeps no state: cached.infer reruns System 2 on every call
        cached.infer(**obs, noise=seeded_noise(11))
        torch.testing.assert_close(cached.infer(**other, noise=seeded_noise(11))["actions"],
                                   fresh.infer(**other, noise=seeded_noise(11))["actions"], rtol=0, atol=0)
