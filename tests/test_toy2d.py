"""toy2d.py against exact answers: closed forms of the forward process, the posterior and the
training objective, the exact noise predictor of a Gaussian mixture, the data sets, the metrics,
the step convention shared with ddpm.py, and the command line.

Every Monte Carlo check is seeded and allows 5 standard errors (a false alarm about 1 in 10^6 per
check). A sampler's discretisation bias is computed exactly (one Gaussian: every step is affine)
and added to the target; on the mixture, what that misses is bounded (see the test).
"""
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import ddpm
import toy2d

T = 1000
SCHED = toy2d.make_schedule(T)
# float64 tables for the closed-form checks: in float32, 1 - abar is off by ~1e-4 of itself near
# t = 0 (abar = 0.9999), which biases the posterior mean by ~1e-4: several s.e. at n = 200,000.
SCHED64 = toy2d.make_schedule(T, torch.float64)
REPO = os.path.dirname(os.path.abspath(toy2d.__file__))


def within(value, target, se, k=5.0):
    """|value - target| < k standard errors, elementwise."""
    value, target, se = (np.asarray(v, dtype=np.float64) for v in (value, target, se))
    assert np.all(np.abs(value - target) < k * se), (value, target, se)


def oracle(sched):
    return lambda x, t: toy2d.oracle_eps(x, t, sched)


def test_schedule():
    """betas from 1e-4 to 0.02 at T = 1000, times 1000/T at other T (DDPM Sec. 4), evenly spaced;
    alphas = 1 - betas, alphas_cumprod their running product, alphas_cumprod_prev[t] = abar_{t-1}
    with 1 at t = 0."""
    for steps, first, last in ((T, 1e-4, 0.02), (100, 1e-3, 0.2), (21, 1e-4 * 1000 / 21, 20 / 21)):
        betas = toy2d.make_schedule(steps, torch.float64)["betas"].numpy()
        np.testing.assert_allclose(betas, np.linspace(first, last, steps), rtol=1e-12)
    torch.testing.assert_close(SCHED64["alphas"], 1 - SCHED64["betas"])
    torch.testing.assert_close(SCHED64["alphas_cumprod"], torch.cumprod(SCHED64["alphas"], 0))
    assert SCHED64["alphas_cumprod_prev"][0] == 1
    assert torch.equal(SCHED64["alphas_cumprod_prev"][1:], SCHED64["alphas_cumprod"][:-1])


def test_schedule_is_ddpm_py_s():
    """The same float32 tables as ddpm.make_schedule("linear", T), bit for bit, at several T."""
    for steps in (1000, 100, 50, 21):
        ours, theirs = toy2d.make_schedule(steps), ddpm.make_schedule("linear", steps)
        for name in ("betas", "alphas", "alphas_cumprod"):
            assert torch.equal(ours[name], theirs[name]), (steps, name)


@pytest.mark.parametrize("t", [0, 9, 300])
def test_forward_process_marginal(t):
    """t+1 single steps x_s = sqrt(alpha_s) x_{s-1} + sqrt(beta_s) z (DDPM Eq. 2) have the
    marginal of q_sample, N(sqrt(abar_t) x0, (1 - abar_t) I) (DDPM Eq. 4). n = 40,000 chains:
    mean s.e. sqrt(var / n), variance s.e. var sqrt(2 / n) (0.7 %), so a shift of t by one
    (beta_9 is 15 % of 1 - abar_9) is caught."""
    sched, n = SCHED64, 40_000
    gen = torch.Generator().manual_seed(t)
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    x = x0.expand(n, 2)
    for s in range(t + 1):
        beta = sched["betas"][s]
        x = (1 - beta).sqrt() * x + beta.sqrt() * toy2d.noise_like(x, gen)
    mean = toy2d.q_sample(x0, t, torch.zeros_like(x0), sched)  # the coefficients, read off q_sample
    var = (toy2d.q_sample(x0, t, torch.ones_like(x0), sched) - mean) ** 2
    within(x.mean(0), mean[0], (var[0] / n).sqrt())
    within(x.var(0), var[0], var[0] * math.sqrt(2 / n))


@pytest.mark.parametrize("steps, t", [(T, 1), (T, 10), (T, 300), (T, 999), (21, 5), (21, 20)])
def test_posterior_is_the_conditional_of_the_forward_process(steps, t):
    """Draw x0 (the mixture), x_{t-1} ~ q(x_{t-1} | x0), x_t ~ q(x_t | x_{t-1}). Then
    r = x_{t-1} - mu~(x0, x_t) (DDPM Eq. 7) has mean 0, variance beta~_t, and is uncorrelated with
    x0 and x_t. n = 200,000; every tolerance is 5 s.e. of the sample statistic. T = 21 (betas up
    to 0.95) tells apart sqrt(abar_t) and sqrt(abar_{t-1}), which differ by sqrt(1 - beta_t)."""
    sched, n = (SCHED64 if steps == T else toy2d.make_schedule(steps, torch.float64)), 200_000
    gen = torch.Generator().manual_seed(t)
    x0 = torch.tensor(toy2d.make_data("mixture", n, np.random.default_rng(t)), dtype=torch.float64)
    x_prev = toy2d.q_sample(x0, t - 1, toy2d.noise_like(x0, gen), sched)
    beta = sched["betas"][t]
    x_t = (1 - beta).sqrt() * x_prev + beta.sqrt() * toy2d.noise_like(x0, gen)      # DDPM Eq. 2
    mean, var = toy2d.posterior(x0, x_t, t, sched)
    r, var = x_prev - mean, var.item()
    within(r.mean(0), 0, math.sqrt(var / n))
    within(r.var(0), var, var * math.sqrt(2 / n))
    for z in (x0, x_t):
        within((r * z).mean(0), 0, (r * z).std(0) / math.sqrt(n))


def test_denoising_loss_draws_t_uniformly_and_pairs_it_with_its_noise():
    """DDPM Alg. 1: t ~ U{0, ..., T-1}, x_t = q_sample(x0, t, eps), loss = mean |eps - eps_theta|^2.
    With x0 one point c, eps = (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t) exactly: a network that
    returns this scores 0 (float32 rounding: < 1e-6), one that returns 0 scores E eps^2 = 1 (s.e.
    sqrt(2 / 2n)). The t it is shown: both ends drawn, mean (T-1)/2 and variance (T^2-1)/12 of
    the discrete uniform within 5 s.e. (sqrt(var / n), var sqrt(4/5 / n)); n = 100,000."""
    sched, n = SCHED, 100_000
    c, seen = torch.tensor([[0.7, -1.2]]).expand(n, 2), []

    def exact(x_t, t):
        seen.append(t)
        abar = sched["alphas_cumprod"][t][:, None]
        return (x_t - abar.sqrt() * c) / (1 - abar).sqrt()
    torch.manual_seed(0)
    assert toy2d.denoising_loss(exact, c, sched) < 1e-6
    within(toy2d.denoising_loss(lambda x, t: torch.zeros_like(x), c, sched), 1, math.sqrt(1 / n))
    t, var = seen[0].double(), (T**2 - 1) / 12
    assert t.min() == 0 and t.max() == T - 1
    within(t.mean(), (T - 1) / 2, math.sqrt(var / n))
    within(t.var(), var, var * math.sqrt(0.8 / n))   # uniform: Var[(t - mu)^2] = 4/5 var^2


def test_ddim_timesteps():
    """Convention shared with ddpm.py and ddim.py: t_i = floor((T-1)(S-1-i)/(S-1) + 1/2), ties
    rounded up (T = 6, S = 3: 2.5 -> 3), S = 1 is [T-1]. Pairs chain down to t_prev = -1 with no
    duplicates; the sampler calls the network at exactly those t. The float formula below is
    exact here: a true tie is a representable k + 1/2, any other value is >= 1/2000 from one."""
    assert toy2d.ddim_timesteps(6, 3) == [(5, 3), (3, 0), (0, -1)]
    for S in range(1, T + 1):
        pairs = toy2d.ddim_timesteps(T, S)
        ts = [t for t, _ in pairs]
        i = np.arange(S)
        assert ts == (np.floor((T - 1) * (S - 1 - i) / max(S - 1, 1) + 0.5).astype(int).tolist()
                      if S > 1 else [T - 1])
        assert [p for _, p in pairs] == ts[1:] + [-1] and all(a > b for a, b in zip(ts, ts[1:]))
    seen = []
    cfg = toy2d.Config(ddim_steps=7, n_samples=4)
    toy2d.sample(lambda x, t: seen.append(t) or torch.zeros_like(x), SCHED, cfg,
                 "ddim", 0.0, torch.Generator().manual_seed(0))
    assert seen == [t for t, _ in toy2d.ddim_timesteps(T, 7)]


def test_ddim_timesteps_are_ddpm_py_s():
    """The same list as ddpm.timesteps for every step count S = 1..1000 of T = 1000."""
    for S in range(1, T + 1):
        assert [t for t, _ in toy2d.ddim_timesteps(T, S)] == ddpm.timesteps(T, S).tolist(), S


def test_ddim_with_eta_1_and_all_steps_is_ddpm():
    """With t_prev = t - 1 and eta = 1, DDIM Eq. 16 gives sigma_t^2 = beta~_t and Eq. 12 the
    posterior mean of DDPM Eq. 7: one step of each agrees for any eps (same noise draws), to
    float64 rounding."""
    sched = SCHED64
    eps_fn = lambda x, t: torch.sin(3 * x + t)                    # any predictor will do
    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0, 1, 10, 500, 999):
        a = toy2d.p_sample(eps_fn, x, t, sched, torch.Generator().manual_seed(t))
        b = toy2d.ddim_step(eps_fn, x, t, t - 1, 1.0, sched, torch.Generator().manual_seed(t))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def gaussian_through_sampler(m, S, pairs, eta, sched):
    """Exact mean and covariance of the DDIM sampler's output when the data are ONE Gaussian
    N(m, S) and the noise predictor is exact: eps*(x) = sqrt(1-abar) C^-1 (x - sqrt(abar) m),
    C = abar S + (1-abar) I, is affine, so every step is x' = A x + b + sigma z and the moments
    propagate exactly: mu' = A mu + b, P' = A P A^T + sigma^2 I, from mu = 0, P = I."""
    eye, m, S = torch.eye(2, dtype=torch.float64), torch.tensor(m), torch.tensor(S)
    abar = torch.cat([torch.ones(1), sched["alphas_cumprod"]]).double()   # abar[t + 1]
    mu, P = torch.zeros(2, dtype=torch.float64), eye
    for t, t_prev in pairs:
        a, a_prev = abar[t + 1], abar[t_prev + 1]
        G = (1 - a).sqrt() * torch.linalg.inv(a * S + (1 - a) * eye)      # eps* = G (x - m_t)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        c_eps = (1 - a_prev - sigma**2).clamp(min=0).sqrt() - (a_prev * (1 - a) / a).sqrt()
        A = (a_prev / a).sqrt() * eye + c_eps * G
        mu, P = A @ mu - c_eps * G @ (a.sqrt() * m), A @ P @ A.T + sigma**2 * eye
    return mu.numpy(), P.numpy()


def moment_tolerances(P, n):
    """5 s.e. of the sample mean and covariance of n draws of N(., P)."""
    return np.sqrt(np.diag(P) / n), np.sqrt((np.outer(np.diag(P), np.diag(P)) + P**2) / n)


@pytest.fixture
def one_gaussian(monkeypatch):
    """The mixture reduced to one component N(m, S), thin in one direction (std 0.11)."""
    m, S = np.array([1.0, -0.5]), np.array([[0.6, 0.15], [0.15, 0.05]])
    monkeypatch.setattr(toy2d, "MIX_W", np.array([1.0]))
    monkeypatch.setattr(toy2d, "MIX_MU", m[None])
    monkeypatch.setattr(toy2d, "MIX_COV", S[None])
    return m, S


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_50_on_one_gaussian_matches_the_exact_propagation(eta, one_gaussian):
    """With a one-component 'mixture' N(m, S) the oracle is affine and
    the output of DDIM-50 is exactly N(mu, P) from gaussian_through_sampler, discretisation bias
    included: P - S reaches -0.05 (eta 0) and -0.1 (eta 1), 9 and 20 s.e., so the check sees
    the bias. n = 20,000; 5 s.e. of Gaussian moments."""
    m, S = one_gaussian
    sched, n = SCHED, 20_000
    cfg = toy2d.Config(data="mixture", ddim_steps=50, n_samples=n)
    x, _ = toy2d.sample(oracle(sched), sched, cfg, "ddim", eta, torch.Generator().manual_seed(2))
    mu, P = gaussian_through_sampler(m, S, toy2d.ddim_timesteps(T, 50), eta, sched)
    se_mean, se_cov = moment_tolerances(P, n)
    x = x.double().numpy()
    within(x.mean(0), mu, se_mean)
    within(np.cov(x.T), P, se_cov)


def test_annealed_langevin_on_one_gaussian_matches_the_exact_propagation(one_gaussian):
    """Annealed Langevin (Song & Ermon Alg. 1) on y = x0 + sigma eps with data N(m, S): the score
    -eps*(sqrt(abar) y) / sigma = -(S + sigma^2 I)^-1 (y - m) is affine, so every step
    y' = A y + b + sqrt(alpha) z, A = I - alpha/2 (S + sigma^2 I)^-1, moves the moments exactly:
    mu' = A mu + b, P' = A P A^T + alpha I, from N(0, sigma_1^2 I). This includes Langevin's
    own step-size bias. 20 levels x 5 steps, n = 20,000; 5 s.e. of Gaussian moments."""
    m, S = one_gaussian
    sched, n = SCHED, 20_000
    cfg = toy2d.Config(data="mixture", langevin_levels=20, langevin_steps=5, n_samples=n)
    x, _ = toy2d.sample(oracle(sched), sched, cfg, "langevin", 0.0,
                        torch.Generator().manual_seed(3))
    abar, eye = sched["alphas_cumprod"].double().numpy(), np.eye(2)
    levels = [t for t, _ in toy2d.ddim_timesteps(T, cfg.langevin_levels)]
    mu, P = np.zeros(2), (1 - abar[levels[0]]) / abar[levels[0]] * eye
    for t in levels:
        sigma2 = (1 - abar[t]) / abar[t]
        alpha, C_inv = cfg.langevin_step * sigma2, np.linalg.inv(S + sigma2 * eye)
        A = eye - alpha / 2 * C_inv
        for _ in range(cfg.langevin_steps):
            mu, P = A @ mu + alpha / 2 * C_inv @ m, A @ P @ A.T + alpha * eye
    se_mean, se_cov = moment_tolerances(P, n)
    x = x.double().numpy()
    within(x.mean(0), mu, se_mean)
    within(np.cov(x.T), P, se_cov)


@pytest.mark.parametrize("sampler, steps, eta, n", [("ddpm", T, 1.0, 10_000),
                                                    ("ddim", 200, 0.0, 20_000)])
def test_oracle_samplers_reproduce_the_mixture(sampler, steps, eta, n):
    """DDPM-1000 and DDIM-200 driven by the exact eps* reproduce the component weights, means and
    covariances. Samples go to their most responsible component (components are >= 4.5 std
    apart along the lines between them: a true sample is misassigned with probability ~1e-6).
    Targets: the true moments plus each component's discretisation bias computed exactly as if
    it were alone (gaussian_through_sampler: up to -0.0065 for DDPM-1000, -0.013 for DDIM-200).
    What that misses, the components' interaction, was measured once (n = 100,000 and 200,000):
    at most 0.006 in a mean and 0.008 in a covariance, under 2 s.e. here. Tolerances: 5 s.e. of
    Gaussian sample moments; weights sqrt(w (1-w) / n). (DDIM-50's interaction bias, 0.035 in
    the means, is not small: DDIM-50 is checked exactly on one Gaussian above.)"""
    sched = SCHED
    cfg = toy2d.Config(data="mixture", ddim_steps=steps, n_samples=n)
    x, _ = toy2d.sample(oracle(sched), sched, cfg, sampler, eta, torch.Generator().manual_seed(1))
    log_wn, _ = toy2d.mixture_terms(x, 1.0)
    k_of, x = log_wn.argmax(1).numpy(), x.double().numpy()
    w = toy2d.MIX_W
    within(np.bincount(k_of, minlength=3) / n, w, np.sqrt(w * (1 - w) / n))
    for k, (m, S) in enumerate(zip(toy2d.MIX_MU, toy2d.MIX_COV)):
        mu, P = gaussian_through_sampler(m, S, toy2d.ddim_timesteps(T, steps), eta, sched)
        xk = x[k_of == k]
        se_mean, se_cov = moment_tolerances(S, len(xk))
        within(xk.mean(0), mu, se_mean)
        within(np.cov(xk.T), P, se_cov)


@pytest.mark.parametrize("t", [0, 100, 600])
def test_oracle_is_the_conditional_mean_of_the_noise(t):
    """Tweedie: eps*(x_t) = E[eps | x_t], so eps - eps*(x_t) has mean 0 and is uncorrelated with
    x_t. n = 200,000 pairs (x0 from the mixture, eps); 5 s.e. of the sample means."""
    sched, n = SCHED, 200_000
    x0 = torch.tensor(toy2d.make_data("mixture", n, np.random.default_rng(t)))
    eps = torch.randn(n, 2, generator=torch.Generator().manual_seed(t))
    x_t = toy2d.q_sample(x0, t, eps, sched)
    r = (eps - toy2d.oracle_eps(x_t, t, sched)).double()
    within(r.mean(0), 0, r.std(0) / math.sqrt(n))
    for z in (x_t[:, :1], x_t[:, 1:]):
        within((r * z).mean(0), 0, (r * z).std(0) / math.sqrt(n))


@pytest.mark.parametrize("abar", [1.0, 0.3])
def test_mixture_density_integrates_to_one(abar):
    """log q_t of mixture_terms (the metrics' 'mean log q0' at abar = 1) is a normalised density:
    a midpoint sum over [-8, 8]^2 with step 0.02 (the thinnest std is 0.22, 11 steps) is 1 to
    1e-6 (the rule's error on Gaussians is far smaller; the tails outside hold < 1e-12)."""
    g = torch.arange(-8 + 0.01, 8, 0.02, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    log_q = torch.logsumexp(toy2d.mixture_terms(grid, abar)[0], 1)
    assert abs(log_q.exp().sum().item() * 0.02**2 - 1) < 1e-6


def test_trained_network_is_close_to_the_oracle():
    """A short CPU run on the mixture (600 steps) learns eps*: the mean of |eps_theta - eps*|^2
    over x_t ~ q_t at t = 0, 50, ..., 950 is under 10 % of the irreducible denoising loss
    E|eps - eps*|^2 (measured: 0.0098 against 0.29, 3.4 %). A quality bar, not a statistical
    test; n = 4,000 per t keeps its Monte Carlo error near 1 %."""
    torch.manual_seed(0)
    cfg = toy2d.Config(data="mixture", steps=600, batch=256, hidden=64, blocks=2)
    sched, n = SCHED, 4000
    data = torch.tensor(toy2d.make_data("mixture", 100_000, np.random.default_rng(0)))
    model = toy2d.train(cfg, data, sched)
    x0 = torch.tensor(toy2d.make_data("mixture", n, np.random.default_rng(1)))
    eps = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    err, floor = [], []
    for t in range(0, T, 50):
        x_t = toy2d.q_sample(x0, t, eps, sched)
        exact = toy2d.oracle_eps(x_t, t, sched)
        with torch.no_grad():
            err.append(((model(x_t, torch.full((n,), t)) - exact) ** 2).mean().item())
        floor.append(((eps - exact) ** 2).mean().item())
    print(f"E|eps_theta - eps*|^2 = {np.mean(err):.4f}, E|eps - eps*|^2 = {np.mean(floor):.4f}")
    assert np.mean(err) < 0.1 * np.mean(floor)


def test_swiss_roll():
    """KAIST's swiss roll in 2D: the points are (t cos t, t sin t) after one affine map, with t
    uniform on the columns [1.5 pi, 2.5 pi], [2.5 pi, 3.5 pi], [3.5 pi, 4.5 pi] with weights
    3/8, 2/8, 3/8 (the hole takes one of the middle column's three cells); 5 s.e.
    sqrt(p (1-p) / n), n = 200,000. Standardised by the exact moments: scalar mean 0 and scalar
    std 2 (5 s.e. of the per-point means of x + y and x^2 + y^2)."""
    n = 200_000
    x = toy2d.make_data("swiss_roll", n, np.random.default_rng(0)).astype(np.float64)
    mean, std = toy2d.swiss_roll_moments()
    p = x / 2 * std + mean                          # back to (t cos t, t sin t)
    t = np.linalg.norm(p, axis=1)
    np.testing.assert_allclose(p, t[:, None] * np.stack([np.cos(t), np.sin(t)], 1), atol=1e-4)
    assert t.min() > 1.5 * np.pi - 1e-5 and t.max() < 4.5 * np.pi + 1e-5
    col = np.clip((t / np.pi - 1.5) // 1, 0, 2).astype(int)
    w = np.array([3, 2, 3]) / 8
    within(np.bincount(col, minlength=3) / n, w, np.sqrt(w * (1 - w) / n))
    s1, s2 = x.mean(1), (x**2).mean(1)
    within(s1.mean(), 0, s1.std() / math.sqrt(n))
    within(s2.mean(), 4 + s1.mean() ** 2, s2.std() / math.sqrt(n))


def test_the_other_data_sets():
    """n = 100,000 points each. circles: radius 2 or 4, half each. checkerboard: the dark squares
    of side 2 of [-4, 4]^2 (column + row even), 1/8 in each. gaussians8: within 1 of one of 8
    centres 3 (cos, sin)(2 pi k / 8), 1/8 at each (with noise std 0.15 a point lies further out
    with probability exp(-1 / 0.045) = 2e-10). moons: within 0.14 of one of the two unit arcs
    after undoing the affine map (noise std 0.02 there: exp(-24.5) = 2e-11), half on each.
    mixture: per component, weight, mean and covariance as declared (5 s.e.; assignment as in
    test_oracle_samplers_reproduce_the_mixture). Fractions: 5 s.e. sqrt(p (1-p) / n)."""
    n, rng = 100_000, np.random.default_rng(0)
    frac = lambda hits, p: within(np.mean(hits), p, math.sqrt(p * (1 - p) / n))
    r = np.linalg.norm(toy2d.make_data("circles", n, rng), axis=1)
    assert np.allclose(np.minimum(abs(r - 2), abs(r - 4)), 0, atol=1e-5)
    frac(r > 3, 0.5)
    cell = np.floor((toy2d.make_data("checkerboard", n, rng) + 4) / 2).astype(int)
    assert cell.min() >= 0 and cell.max() <= 3 and np.all(cell.sum(1) % 2 == 0)
    frac(cell[:, 0] * 4 + cell[:, 1] == 2, 1 / 8)
    x, a = toy2d.make_data("gaussians8", n, rng), 2 * np.pi * np.arange(8) / 8
    d = np.linalg.norm(x[:, None] - 3 * np.stack([np.cos(a), np.sin(a)], 1), axis=2)
    assert d.min(1).max() < 1
    frac(d.argmin(1) == 5, 1 / 8)
    p = toy2d.make_data("moons", n, rng) / 2 + [0.5, 0.25]
    upper, lower = abs(np.linalg.norm(p, axis=1) - 1), abs(np.linalg.norm(p - [1, 0.5], axis=1) - 1)
    assert np.minimum(upper, lower).max() < 0.14
    frac(upper < lower, 0.5)
    x, w = toy2d.make_data("mixture", n, rng).astype(np.float64), toy2d.MIX_W
    k_of = toy2d.mixture_terms(torch.tensor(x), 1.0)[0].argmax(1).numpy()
    within(np.bincount(k_of, minlength=3) / n, w, np.sqrt(w * (1 - w) / n))
    for k, (m, S) in enumerate(zip(toy2d.MIX_MU, toy2d.MIX_COV)):
        se_mean, se_cov = moment_tolerances(S, np.sum(k_of == k))
        within(x[k_of == k].mean(0), m, se_mean)
        within(np.cov(x[k_of == k].T), S, se_cov)


def test_chamfer_and_mmd():
    """Chamfer on a hand-worked case: a = {(0,0), (1,0)}, b = {(0,1)}: a->b 1 + 2, b->a 1, = 4.
    MMD^2 between N(0, s^2 I) and N(m, s^2 I), RBF bandwidth h, in 2D, closed form:
    2 h^2 / (h^2 + 2 s^2) (1 - exp(-|m|^2 / (2 (h^2 + 2 s^2)))), 0 at m = 0 (the estimator is
    unbiased); 20 replicates of n = 1,000, 5 s.e. of their mean."""
    a, b = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert toy2d.chamfer(a, b) == pytest.approx(4.0)
    s, h, gen = 1.0, 0.5, torch.Generator().manual_seed(0)
    c = h * h + 2 * s * s
    for m in (torch.tensor([1.0, 0.0]), torch.zeros(2)):
        exact = 2 * h * h / c * (1 - math.exp(-m.square().sum().item() / (2 * c)))
        reps = [toy2d.mmd2(s * torch.randn(1000, 2, generator=gen),
                           m + s * torch.randn(1000, 2, generator=gen), h) for _ in range(20)]
        within(np.mean(reps), exact, np.std(reps, ddof=1) / math.sqrt(len(reps)))


# ------------------------------------------------------------------------------- command line
def stops(call):
    """The one-line message of a SystemExit raised by call() (exit status 1: a string code)."""
    with pytest.raises(SystemExit) as e:
        call()
    message = e.value.code
    assert isinstance(message, str) and message.startswith("toy2d.py: ") and "\n" not in message
    return message


@pytest.mark.parametrize("argv, flag", [
    (["--data", "nope"], "--data"), (["--steps", "1.5"], "--steps"), (["--steps", "0"], "--steps"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--langevin-step", "-inf"], "--lang"),
    (["--hidden", "7"], "--hidden"), (["--n-samples", "1"], "--n-samples"),
    (["--etas", "0", "1.5"], "--etas"), (["--etas", "nan"], "--etas"), (["--etas", "x"], "--etas"),
    (["--seed", "-1"], "--seed"), (["--oracle"], "--data mixture"), (["--T", "20"], "--T 20"),
    (["--ddim-steps", "2000"], "--ddim-steps"), (["--sampler", "langevin", "--T", "50"],
                                                 "--langevin-levels"),
])
def test_bad_input_is_one_clear_line(argv, flag):
    assert flag in stops(lambda: toy2d.check_config(toy2d.parse_config(argv)))


@pytest.mark.parametrize("argv", [
    ["--T", "50", "--ddim-steps", "10"],            # Langevin's 100 levels: Langevin is not run
    ["--T", "21", "--sampler", "ddpm"], ["--etas", "0", "1"]])
def test_good_input_passes(argv):
    toy2d.check_config(toy2d.parse_config(argv))


def test_an_unwritable_out_stops_before_training(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")  # a file where the folder should be
    monkeypatch.setattr(toy2d, "train", lambda *a: pytest.fail("trained before checking --out"))
    cfg = toy2d.parse_config(["--out", str(tmp_path / "file" / "out")])
    assert "pass a writable --out" in stops(lambda: toy2d.main(cfg))


def test_a_run_writes_into_out_what_it_says(tmp_path, monkeypatch, capsys):
    """Default --out is out/ of the working folder (never the repository's samples/); each
    "wrote PATH" names a file that exists; the .npy holds the samples."""
    monkeypatch.chdir(tmp_path)
    toy2d.main(toy2d.parse_config("--data mixture --oracle --sampler ddim --ddim-steps 5 --etas 0 "
                                  "--n-samples 64".split()))
    wrote = [line[6:] for line in capsys.readouterr().out.splitlines() if line.startswith("wrote")]
    assert sorted(wrote) == [f"out/toy2d_mixture_oracle_ddim5_eta0.{e}" for e in ("gif", "png")]
    assert all(os.path.isfile(path) for path in wrote)
    x = np.load("out/toy2d_mixture_oracle_ddim5_eta0.npy")
    assert x.shape == (64, 2) and np.isfinite(x).all()


def test_diverging_runs_stop_with_the_flag_to_lower(tmp_path):
    """A Langevin step far past stability (alpha_i / sigma_i^2 < 4 for the exact score) or an
    exploding learning rate: one line naming the flag, no pictures of non-finite samples."""
    cfg = toy2d.parse_config(["--data", "mixture", "--oracle", "--sampler", "langevin",
                              "--langevin-step", "1000", "--langevin-levels", "20",
                              "--n-samples", "64", "--out", str(tmp_path)])
    assert "lower --langevin-step" in stops(lambda: toy2d.main(cfg))
    assert not list(tmp_path.glob("*.png"))
    cfg = toy2d.Config(lr=1e30, steps=3, batch=64, hidden=16, blocks=1)
    data = torch.tensor(toy2d.make_data("moons", 1000, np.random.default_rng(0)))
    assert "lower --lr" in stops(lambda: toy2d.train(cfg, data, SCHED))


def test_ctrl_c_stops_with_one_line(tmp_path):
    """The real command line, interrupted once its work has begun (data, then a training that
    would never end): exit status 130, one line on stderr, no traceback, nothing written."""
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "toy2d.py"), "--steps", "1000000"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    while b"toy2d.py: {" not in out:   # main() has begun: it prints the config first
        chunk = os.read(p.stdout.fileno(), 4096)
        assert chunk, p.communicate()
        out += chunk
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.decode().strip() == "toy2d.py: stopped by Ctrl-C"
    assert not list(tmp_path.glob("out/*.*"))


def test_bad_input_from_the_shell(tmp_path, monkeypatch, as_command):
    """The command line: exit status 1, one line on stderr, no traceback, no output."""
    monkeypatch.chdir(tmp_path)
    p = as_command("toy2d.py", "--lr", "inf")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().splitlines() == ["toy2d.py: --lr inf: must be a finite number"]
