"""FAST tokenizer: DCT, round-trip error bound, BPE compression, save/load, malformed tokens, fast-fit."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from graphvla.processors.fast_tokenizer import FASTTokenizer, dct_matrix
from graphvla.cli import main

H, A = 10, 3


def smooth_chunks(n, horizon=H, dim=A, seed=0):
    """Random sinusoids: smooth like robot trajectories, normalized to about [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, horizon)[None, :, None]
    freq = rng.uniform(0.2, 1.5, (n, 1, dim))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, dim))
    amp = rng.uniform(0.2, 0.9, (n, 1, dim))
    return amp * np.sin(2 * np.pi * freq * t + phase)


@pytest.fixture(scope="module")
def fitted():
    return FASTTokenizer(H, A, scale=10, vocab_size=256).fit(smooth_chunks(1500))


def test_dct_is_orthonormal_type_ii():
    c = dct_matrix(6)
    np.testing.assert_allclose(c @ c.T, np.eye(6), atol=1e-12)
    x = np.random.default_rng(1).normal(size=6)
    # DCT-II by its definition, orthonormal scaling
    n = np.arange(6)
    ref = np.array([np.sum(x * np.cos(np.pi * (n + 0.5) * k / 6)) for k in range(6)]) * np.sqrt(2 / 6)
    ref[0] /= np.sqrt(2)
    np.testing.assert_allclose(c @ x, ref, atol=1e-12)


def test_integers_are_frequency_major():
    tok = FASTTokenizer(4, 2, scale=10)
    chunk = np.zeros((1, 4, 2))
    chunk[0, :, 0], chunk[0, :, 1] = 0.5, -0.25  # constant per dim: only frequency 0 is non-zero
    ints = tok.to_ints(chunk)[0]
    np.testing.assert_array_equal(ints[:2], [10, -5])  # 0.5 * sqrt(4) * 10, -0.25 * 2 * 10
    assert not ints[2:].any()


def test_round_trip_error_within_bound(fitted):
    test = smooth_chunks(300, seed=7)
    ids = fitted.encode(test)
    decoded, ok = fitted.decode(ids)
    assert ok.all()
    err = np.abs(decoded - test).max()
    bound = fitted.error_bound()
    # bound = 0.5/scale * max column L1 norm of the DCT <= 0.5 * sqrt(H) / scale
    assert bound <= 0.5 * np.sqrt(H) / 10 + 1e-12
    print(f"round-trip max error {err:.4f} <= bound {bound:.4f}")
    assert 0 < err <= bound
    # the bound shrinks with the scale and so does the error
    fine = FASTTokenizer(H, A, scale=100, vocab_size=1024).fit(smooth_chunks(1500))
    fine_err = np.abs(fine.decode(fine.encode(test))[0] - test).max()
    assert fine_err <= fine.error_bound() < bound / 5


def test_bpe_compresses_smooth_chunks(fitted):
    ids = fitted.encode(smooth_chunks(300, seed=3))
    mean_len = np.mean([len(i) for i in ids])
    print(f"tokens per chunk {mean_len:.1f} for {H * A} values")
    assert fitted.vocab_size <= 256
    assert mean_len < 0.7 * H * A


def test_save_load_same_tokens(fitted, tmp_path):
    fitted.save(tmp_path / "tok")
    loaded = FASTTokenizer.load(tmp_path / "tok")
    chunks = smooth_chunks(50, seed=9)
    assert loaded.encode(chunks) == fitted.encode(chunks)
    assert loaded.error_bound() == fitted.error_bound()


def test_malformed_tokens_decode_to_zeros_with_flag(fitted):
    good = fitted.encode(smooth_chunks(1, seed=4))[0]
    batch = [good, [fitted.vocab_size + 5], [-1] + good, good[:-1], good + good, []]
    actions, ok = fitted.decode(batch)
    assert ok.tolist() == [True, False, False, False, False, False]
    assert np.abs(actions[0]).max() > 0.05
    assert not actions[1:].any()


def test_out_of_range_values_are_clipped_not_crashing(fitted):
    far = smooth_chunks(2, seed=11) * 20
    actions, ok = fitted.decode(fitted.encode(far))
    assert ok.all() and np.isfinite(actions).all()
    assert np.abs(actions - far).max() > fitted.error_bound()  # outside the fitted range the bound does not hold


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="fast_config.json"):
        FASTTokenizer.load(tmp_path)
    (tmp_path / "fast_config.json").write_text(json.dumps({"format": "other"}))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="fast_config.json"):
        FASTTokenizer.load(tmp_path)


def test_fit_refuses_vocab_smaller_than_alphabet():
    with pytest.raises(ValueError, match="vocab_size 8"):
        FASTTokenizer(H, A, scale=10, vocab_size=8).fit(smooth_chunks(100))


def test_fast_fit_command(tmp_path):
    chunks = smooth_chunks(400, seed=5)
    np.savez(tmp_path / "chunks.npz", actions=chunks)
    result = CliRunner().invoke(main, ["fast-fit", str(tmp_path / "chunks.npz"), "-o", str(tmp_path / "tok"), "--vocab-size", "200"])
    assert result.exit_code == 0, result.output
    assert "tokens per chunk" in result.output
    tok = FASTTokenizer.load(tmp_path / "tok")
    assert (tok.horizon, tok.action_dim, tok.vocab_size) == (H, A, 200)
    assert np.abs(tok.decode(tok.encode(chunks))[0] - chunks).max() <= tok.error_bound()
    np.save(tmp_path / "flat.npy", chunks[:, :, 0])
    bad = CliRunner().invoke(main, ["fast-fit", str(tmp_path / "flat.npy"), "-o", str(tmp_path / "t2")])
    assert bad.exit_code == 1 and "flat.npy" in bad.output and "[N, horizon, action_dim]" in bad.output


def test_fast_fit_from_lerobot_folder(tmp_path):
    from graphvla.data.lerobot_write import LeRobotWriter

    writer = LeRobotWriter(tmp_path / "ds", fps=10, features={"action": ("float32", (A,)), "observation.state": ("float32", (2,))})
    rng = np.random.default_rng(0)
    lengths = [30, 25, 40]
    for n in lengths:
        t = np.linspace(0, 3, n)[:, None]
        actions = 5 * np.sin(t * rng.uniform(0.5, 2, (1, A)) + rng.uniform(0, 6, (1, A))) + 2  # raw units, not normalized
        writer.add_episode({"action": actions.astype(np.float32), "observation.state": np.zeros((n, 2), np.float32)}, "reach")
    writer.finalize()
    out = tmp_path / "tok"
    result = CliRunner().invoke(main, ["fast-fit", str(tmp_path / "ds"), "-o", str(out), "--horizon", "8", "--vocab-size", "128"])
    assert result.exit_code == 0, result.output
    assert f"on {sum(lengths)} chunks [8, {A}]" in result.output
    tok = FASTTokenizer.load(out)
    assert (tok.horizon, tok.action_dim) == (8, A)
    # q01..q99 normalization maps the actions to about [-1, 1], so the DC coefficient stays within ~sqrt(8) * scale
    assert -40 <= tok.min_token and tok.max_token <= 40
    missing = CliRunner().invoke(main, ["fast-fit", str(tmp_path / "ds"), "-o", str(out)])
    assert missing.exit_code == 1 and "--horizon" in missing.output
    wrong_key = CliRunner().invoke(main, ["fast-fit", str(tmp_path / "ds"), "-o", str(out), "--horizon", "8", "--key", "act"])
    assert wrong_key.exit_code == 1 and "no column 'act'" in wrong_key.output
