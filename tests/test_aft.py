"""AFT's prior (asvp_fast.transfer.AFTPrior) and the KD baseline against plain NumPy formulas, and
the properties the authors state: rotation invariance, duplicated features, noise features."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings, strategies as st  # noqa: E402

from asvp_fast.transfer import AFTPrior, FeatureRegressionKD  # noqa: E402


def numpy_aft(phi, psi, rho, kernel="linear"):
    """The loss written out: centre per column, rows / (norm + 1e-8), kernels, sqrt(mean sq diff + 1e-8)."""

    def unit(x):
        x = x - x.mean(axis=0, keepdims=True)
        return x / (np.sqrt((x * x).sum(axis=1, keepdims=True)) + 1e-8)

    a, b = unit(phi.astype(np.float64)), unit(psi.astype(np.float64) * rho)
    if kernel == "linear":
        ka, kb = a @ a.T, b @ b.T
    else:
        ka = np.exp(-((a[:, None, :] - a[None, :, :]) ** 2).sum(-1))
        kb = np.exp(-((b[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return np.sqrt(np.mean((ka - kb) ** 2) + 1e-8)


def val(t):
    return float(t.detach())


def _prior_with_rho(dim, rho, **kw):
    prior = AFTPrior(dim, **kw)
    with torch.no_grad():
        prior.s.copy_(torch.logit(torch.as_tensor(rho, dtype=torch.float32)))
    return prior


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(2, 24), d_phi=st.integers(1, 12), d_psi=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
       kernel=st.sampled_from(["linear", "rbf"]))
def test_the_loss_matches_the_numpy_formula(batch, d_phi, d_psi, seed, kernel):
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((batch, d_phi)) * rng.uniform(0.1, 10)
    psi = rng.standard_normal((batch, d_psi)) * rng.uniform(0.1, 10) + rng.standard_normal(d_psi)
    rho = rng.uniform(0.05, 0.95, d_psi)
    prior = _prior_with_rho(d_psi, rho, kernel=kernel)
    got = val(prior(torch.tensor(phi, dtype=torch.float32), torch.tensor(psi, dtype=torch.float32)))
    want = numpy_aft(phi, psi, rho.astype(np.float32), kernel)
    assert got == pytest.approx(want, rel=2e-4, abs=2e-5)


def test_a_fresh_prior_has_rho_one_half_and_its_kernels_are_those_of_the_formula():
    prior = AFTPrior(5)
    np.testing.assert_array_equal(prior.rho.numpy(), np.full(5, 0.5, np.float32))
    rng = np.random.default_rng(0)
    phi, psi = rng.standard_normal((6, 3)), rng.standard_normal((6, 5))
    k_phi, k_psi = prior.kernels(torch.tensor(phi), torch.tensor(psi))
    c = phi - phi.mean(0)
    c /= np.linalg.norm(c, axis=1, keepdims=True) + 1e-8
    np.testing.assert_allclose(k_phi.numpy(), c @ c.T, rtol=1e-5, atol=1e-6)
    assert k_psi.shape == (6, 6)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(2, 20), d_phi=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_the_loss_ignores_an_orthogonal_rotation_of_the_student_features(batch, d_phi, seed):
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((batch, d_phi))
    psi = rng.standard_normal((batch, 7))
    q, _ = np.linalg.qr(rng.standard_normal((d_phi, d_phi)))
    prior = _prior_with_rho(7, rng.uniform(0.1, 0.9, 7))
    as_t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    plain = val(prior(as_t(phi), as_t(psi)))
    rotated = val(prior(as_t(phi @ q), as_t(psi)))
    assert rotated == pytest.approx(plain, rel=1e-5, abs=1e-6)


def test_a_non_orthogonal_map_of_the_student_features_changes_the_loss():
    rng = np.random.default_rng(1)
    phi, psi = torch.tensor(rng.standard_normal((10, 4))), torch.tensor(rng.standard_normal((10, 7)))
    prior = AFTPrior(7)
    skew = torch.tensor(np.eye(4) + np.diag([0.0, 3.0, 6.0, 9.0]))
    assert val(prior(phi @ skew, psi)) != pytest.approx(val(prior(phi, psi)), rel=1e-3)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(2, 16), d=st.integers(2, 8), seed=st.integers(0, 2**31 - 1))
def test_weights_on_two_copies_act_as_one_weight_sqrt_of_the_sum_of_squares(batch, d, seed):
    rng = np.random.default_rng(seed)
    phi = torch.tensor(rng.standard_normal((batch, 3)))
    psi = rng.standard_normal((batch, d))
    rho = rng.uniform(0.05, 0.95, d)
    a = int(rng.integers(d))
    ra, rb = rng.uniform(0.05, 0.6, 2)
    # copies: feature a appears twice, weighted ra and rb
    dup = np.concatenate([psi, psi[:, [a]]], axis=1)
    rho_dup = np.concatenate([rho, [rb]])
    rho_dup[a] = ra
    # one feature weighted sqrt(ra² + rb²) (< 1 here, so a sigmoid can hold it), the other copy at ~0
    rho_one = rho.copy()
    rho_one[a] = np.sqrt(ra**2 + rb**2)
    with_copies = _prior_with_rho(d + 1, rho_dup)
    single = _prior_with_rho(d, rho_one)
    got = val(with_copies.forward(phi.double(), torch.tensor(dup)))
    want = val(single.forward(phi.double(), torch.tensor(psi)))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_two_copies_do_not_act_as_the_plain_sum_of_their_weights():
    rng = np.random.default_rng(2)
    phi, psi = torch.tensor(rng.standard_normal((12, 3))), rng.standard_normal((12, 4))
    dup = torch.tensor(np.concatenate([psi, psi[:, [0]]], axis=1))
    copies = val(_prior_with_rho(5, [0.3, 0.5, 0.5, 0.5, 0.4]).forward(phi, dup))
    root = val(_prior_with_rho(4, [0.5, 0.5, 0.5, 0.5]).forward(phi, torch.tensor(psi)))  # sqrt(.09+.16) = .5
    plain_sum = val(_prior_with_rho(4, [0.7, 0.5, 0.5, 0.5]).forward(phi, torch.tensor(psi)))
    assert copies == pytest.approx(root, rel=1e-6)
    assert copies != pytest.approx(plain_sum, rel=1e-3)


def test_rho_of_pure_noise_features_falls_when_the_label_depends_on_a_few_features():
    gen = torch.Generator().manual_seed(0)
    n, useful, noise = 512, 4, 28
    x = torch.randn(n, useful, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long() + 2 * (x[:, 2] - x[:, 3] > 0).long()  # 4 classes from 4 features
    teacher = torch.cat([x, torch.randn(n, noise, generator=gen)], dim=1)  # the useful ones, then noise
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(useful, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    head = torch.nn.Linear(16, 4)
    prior = AFTPrior(useful + noise)
    opt = torch.optim.Adam([{"params": [*student.parameters(), *head.parameters()], "lr": 1e-2},
                            {"params": prior.parameters(), "lr": 5e-2}])
    for step in range(300):
        idx = torch.randint(0, n, (64,), generator=gen)
        phi = student(x[idx])
        loss = torch.nn.functional.cross_entropy(head(phi), y[idx]) + 1.0 * prior(phi, teacher[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    rho = prior.rho.numpy()
    assert rho[useful:].mean() < 0.5 < rho[:useful].mean()
    assert rho[useful:].max() < rho[:useful].min()


@pytest.mark.parametrize("learn", [True, False])
def test_gradients_reach_s_only_when_scales_are_learned(learn):
    prior = AFTPrior(6, learn_scales=learn)
    phi = torch.randn(8, 4, requires_grad=True)
    loss = prior(phi, torch.randn(8, 6))
    loss.backward()
    assert phi.grad is not None and bool(phi.grad.abs().sum() > 0)
    assert prior.s.requires_grad is learn
    if learn:
        assert prior.s.grad is not None and bool(prior.s.grad.abs().sum() > 0)
    else:
        assert prior.s.grad is None
        assert [p for p in prior.parameters() if p.requires_grad] == []


def test_kd_is_the_mse_of_a_linear_map_from_student_to_teacher():
    torch.manual_seed(0)
    kd = FeatureRegressionKD(3, 5)
    phi, psi = torch.randn(7, 3), torch.randn(7, 5)
    w, b = kd.proj.weight.detach().numpy(), kd.proj.bias.detach().numpy()
    want = np.mean((phi.numpy() @ w.T + b - psi.numpy()) ** 2)
    assert val(kd(phi, psi)) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("module", [lambda: AFTPrior(4), lambda: FeatureRegressionKD(3, 4)], ids=["aft", "kd"])
@pytest.mark.parametrize("student, teacher, message", [
    (torch.randn(5, 3), torch.randn(6, 4), "5 rows but teacher_features has 6"),
    (torch.randn(1, 3), torch.randn(1, 4), "batch of 1"),
    (torch.randn(5, 3), torch.randn(5, 2), "built for teacher_dim = 4"),
    (torch.randn(5, 3), torch.full((5, 4), float("nan")), "teacher_features contain NaN"),
    (torch.full((5, 3), float("inf")), torch.randn(5, 4), "student_features contain NaN"),
    (torch.randn(5), torch.randn(5, 4), "must be 2-D"),
])
def test_bad_inputs_give_clear_errors(module, student, teacher, message):
    with pytest.raises(ValueError, match=message):
        module()(student, teacher)


@pytest.mark.parametrize("kwargs, message", [
    ({"teacher_dim": 0}, "teacher_dim must be a positive integer"),
    ({"teacher_dim": 3, "kernel": "cosine"}, "kernel must be one of"),
    ({"teacher_dim": True}, "teacher_dim must be a positive integer"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AFTPrior(**kwargs)


def test_importing_transfer_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, asvp_fast.transfer as t; assert 'torch' not in sys.modules; t.AFTPrior; assert 'torch' in sys.modules"
    import asvp_fast

    root = str(__import__("pathlib").Path(asvp_fast.__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", env={"PYTHONPATH": root, "PATH": ""})
