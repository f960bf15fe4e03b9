"""toy2d.py against exact answers: closed forms of the forward process and the posterior, the exact
noise predictor of a Gaussian mixture, the swiss roll's construction, and the command line.

Every Monte Carlo check is seeded and allows 5 standard errors (a false alarm about 1 in 10^6 per
check). A sampler's discretisation bias is computed exactly (one Gaussian: every step is affine)
and added to the target; on the mixture, what that misses is bounded (see the test).
"""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import toy2d

T = 1000
SCHEDULES = {kind: toy2d.make_schedule(T, kind) for kind in ("linear", "cosine")}
# float64 tables for the closed-form checks: in float32, 1 - abar is off by ~1e-4 of itself near
# t = 0 (abar = 0.9999), which biases the posterior mean by ~1e-4: several s.e. at n = 200,000.
SCHEDULES64 = {kind: toy2d.make_schedule(T, kind, dtype=torch.float64) for kind in SCHEDULES}


def within(value, target, se, k=5.0):
    """|value - target| < k standard errors, elementwise."""
    value, target, se = (np.asarray(v, dtype=np.float64) for v in (value, target, se))
    assert np.all(np.abs(value - target) < k * se), (value, target, se)


def test_schedules():
    """Linear: betas from 1e-4 to 0.02 (DDPM Sec. 4). Cosine: abar_t = f(t+1) / f(0),
    f(t) = cos^2((t/T + s) / (1 + s) pi/2), s = 0.008 (Nichol & Dhariwal Eq. 17) wherever beta is
    not clipped at 0.999. Both: alphas_cumprod_prev[t] = abar_{t-1}, 1 at t = 0."""
    lin, cos = SCHEDULES64["linear"], SCHEDULES64["cosine"]
    np.testing.assert_allclose(lin["betas"][[0, -1]].numpy(), [1e-4, 0.02], rtol=1e-12)
    f = lambda t: np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2
    unclipped = cos["betas"].numpy() < 0.999
    np.testing.assert_allclose(cos["alphas_cumprod"].numpy()[unclipped],
                               (f(np.arange(1, T + 1)) / f(0))[unclipped], rtol=1e-12)
    for sched in (lin, cos):
        torch.testing.assert_close(sched["alphas_cumprod"], torch.cumprod(1 - sched["betas"], 0))
        assert sched["alphas_cumprod_prev"][0] == 1
        assert torch.equal(sched["alphas_cumprod_prev"][1:], sched["alphas_cumprod"][:-1])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("t", [0, 9, 300])
def test_forward_process_marginal(kind, t):
    """t+1 single steps x_s = sqrt(alpha_s) x_{s-1} + sqrt(beta_s) z (DDPM Eq. 2) have the
    marginal of q_sample, N(sqrt(abar_t) x0, (1 - abar_t) I) (DDPM Eq. 4). n = 40,000 chains:
    mean s.e. sqrt(var / n), variance s.e. var sqrt(2 / n) (0.7 %), so a shift of t by one
    (beta_9 is 15 % of 1 - abar_9 on the linear schedule) is caught."""
    sched, n = SCHEDULES64[kind], 40_000
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


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 10, 300, 999])
def test_posterior_is_the_conditional_of_the_forward_process(kind, t):
    """Draw x0 (the mixture), x_{t-1} ~ q(x_{t-1} | x0), x_t ~ q(x_t | x_{t-1}). Then
    r = x_{t-1} - mu~(x0, x_t) (DDPM Eq. 7) has mean 0, variance beta~_t, and is uncorrelated with
    x0 and x_t. n = 200,000; every tolerance is 5 s.e. of the sample statistic."""
    sched, n = SCHEDULES64[kind], 200_000
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


def test_ddim_timesteps():
    """Pairs start at T-1, end with t_prev = -1 (abar = 1), chain, no duplicates, S of them; the
    sampler calls the network at exactly those t."""
    for S in (1, 2, 7, 50, 999, 1000):
        pairs = toy2d.ddim_timesteps(T, S)
        ts = [t for t, _ in pairs]
        assert len(pairs) == S and ts[0] == T - 1 and pairs[-1][1] == -1
        assert [p for _, p in pairs[:-1]] == ts[1:] and all(a > b for a, b in zip(ts, ts[1:]))
    assert toy2d.ddim_timesteps(T, T) == [(t, t - 1) for t in range(T - 1, -1, -1)]
    seen = []
    cfg = toy2d.Config(ddim_steps=7, n_samples=4)
    toy2d.sample(lambda x, t: seen.append(t) or torch.zeros_like(x), SCHEDULES["linear"], cfg,
                 "ddim", 0.0, torch.Generator().manual_seed(0), "cpu")
    assert seen == [t for t, _ in toy2d.ddim_timesteps(T, 7)]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_with_eta_1_and_all_steps_is_ddpm(kind):
    """With t_prev = t - 1 and eta = 1, DDIM Eq. 16 gives sigma_t^2 = beta~_t and Eq. 12 the
    posterior mean of DDPM Eq. 7: one step of each agrees for any eps (same noise draws), to
    float64 rounding."""
    sched = SCHEDULES64[kind]
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
    sched, n = SCHEDULES["linear"], 20_000
    cfg = toy2d.Config(data="mixture", ddim_steps=50, n_samples=n)
    x, _ = toy2d.sample(lambda x, t: toy2d.oracle_eps(x, t, sched), sched, cfg, "ddim", eta,
                        torch.Generator().manual_seed(2), "cpu")
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
    sched, n = SCHEDULES["linear"], 20_000
    cfg = toy2d.Config(data="mixture", langevin_levels=20, langevin_steps=5, n_samples=n)
    x, _ = toy2d.sample(lambda x, t: toy2d.oracle_eps(x, t, sched), sched, cfg, "langevin", 0.0,
                        torch.Generator().manual_seed(3), "cpu")
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
    sched = SCHEDULES["linear"]
    cfg = toy2d.Config(data="mixture", ddim_steps=steps, n_samples=n)
    x, _ = toy2d.sample(lambda x, t: toy2d.oracle_eps(x, t, sched), sched, cfg, sampler, eta,
                        torch.Generator().manual_seed(1), "cpu")
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
    sched, n = SCHEDULES["linear"], 200_000
    x0 = torch.tensor(toy2d.make_data("mixture", n, np.random.default_rng(t)))
    eps = torch.randn(n, 2, generator=torch.Generator().manual_seed(t))
    x_t = toy2d.q_sample(x0, t, eps, sched)
    r = (eps - toy2d.oracle_eps(x_t, t, sched)).double()
    within(r.mean(0), 0, r.std(0) / math.sqrt(n))
    for z in (x_t[:, :1], x_t[:, 1:]):
        within((r * z).mean(0), 0, (r * z).std(0) / math.sqrt(n))


def test_trained_network_is_close_to_the_oracle():
    """A short CPU run on the mixture (600 steps, ~1.5 s) learns eps*: the mean of
    |eps_theta - eps*|^2 over x_t ~ q_t at t = 0, 50, ..., 950 is under 10 % of the irreducible
    denoising loss E|eps - eps*|^2 (measured: 0.0098 against 0.29, 3.4 %). A quality bar, not a
    statistical test; n = 4,000 per t keeps its Monte Carlo error near 1 %."""
    torch.manual_seed(0)
    cfg = toy2d.Config(data="mixture", steps=600, batch=256, hidden=64, blocks=2)
    sched, n = SCHEDULES["linear"], 4000
    data = torch.tensor(toy2d.make_data("mixture", 100_000, np.random.default_rng(0)))
    model = toy2d.train(cfg, data, sched, torch.device("cpu"))
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
    """The (t, h) rectangle [1.5 pi, 4.5 pi] x [0, 21] minus its middle cell: no point in the
    hole, 1/8 in each other cell (5 s.e. sqrt(p (1-p) / n), n = 200,000); the points are
    (t cos t, t sin t) after one affine map, with scalar mean 0 and scalar std 2 (5 s.e. of the
    per-point means of x + y and x^2 + y^2), so the middle third of the spiral holds 2/8."""
    n = 200_000
    t, h = toy2d.swiss_roll_params(n, np.random.default_rng(0))
    col, row = ((t / np.pi - 1.5) // 1).astype(int), (h // 7).astype(int)
    assert t.min() >= 1.5 * np.pi and t.max() <= 4.5 * np.pi and h.min() >= 0 and h.max() <= 21
    assert not np.any((col == 1) & (row == 1))
    counts = np.bincount(3 * col + row, minlength=9)
    within(np.delete(counts, 4) / n, 1 / 8, math.sqrt(1 / 8 * 7 / 8 / n))
    x = toy2d.make_data("swiss_roll", n, np.random.default_rng(0)).astype(np.float64)
    mean, std = toy2d.swiss_roll_moments()
    np.testing.assert_allclose(np.linalg.norm(x / 2 * std + mean, axis=1), t, rtol=1e-5)
    s1, s2 = x.mean(1), (x**2).mean(1)
    within(s1.mean(), 0, s1.std() / math.sqrt(n))
    within(s2.mean(), 4 + s1.mean() ** 2, s2.std() / math.sqrt(n))


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


@pytest.mark.parametrize("argv, words", [
    (["--data", "nope"], ["unknown --data", *toy2d.DATASETS]),
    (["--oracle"], ["--oracle", "--data mixture"]),
    (["--ddim-steps", "0"], ["--ddim-steps"]),
    (["--steps", "0"], ["--steps"]),
    (["--etas", "0,-0.5"], ["--etas", "[0, 1]"]),
    (["--etas", "1.5"], ["--etas", "[0, 1]"]),
    (["--etas", "zero"], ["--etas", "not a list"]),
    (["--lr", "0"], ["--lr", "above 0"]),
    (["--ddim-steps", "2000"], ["--ddim-steps", "1000"]),
])
def test_bad_input_is_one_clear_line(argv, words):
    with pytest.raises(SystemExit) as e:
        toy2d.check_config(toy2d.parse_config(argv))
    message = str(e.value.code)
    assert message.startswith("toy2d.py: ") and "\n" not in message
    assert all(w in message for w in words), message


def test_an_unwritable_out_stops_before_training(tmp_path):
    (tmp_path / "file").write_text("")  # a file where the folder should be
    cfg = toy2d.parse_config(["--out", str(tmp_path / "file" / "out")])
    with pytest.raises(SystemExit) as e:
        toy2d.main(cfg, toy2d.check_config(cfg))
    assert str(e.value.code).endswith("(Not a directory) -- pass a writable --out")


def test_bad_input_from_the_shell():
    """The real command line: exit status 1, one line on stderr, no traceback."""
    p = subprocess.run([sys.executable, "toy2d.py", "--data", "nope"], capture_output=True,
                       text=True, cwd=toy2d.__file__.rsplit("/", 1)[0])
    assert p.returncode == 1 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1
    assert "swiss_roll" in p.stderr and "Traceback" not in p.stderr
