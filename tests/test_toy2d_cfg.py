"""Classifier-free guidance in toy2d.py (Ho & Salimans 2022, arXiv 2207.12598) against exact
answers: the exact conditional noise predictor of a mixture component, the guided predictor of
Eq. 6 (for the exact predictors and for the network's one batched call), the samplers driven by
them, label dropout (Alg. 1), and the command line.

The classes are the mixture's components. Component k alone is one Gaussian N(mu_k, S_k), so
x_t | k ~ N(sqrt(abar) mu_k, C_k), C_k = abar S_k + (1 - abar) I (DDPM Eq. 4), and its exact
noise predictor eps_k(x) = sqrt(1 - abar) C_k^-1 (x - sqrt(abar) mu_k) is affine: every DDPM or
DDIM step is then x' = A x + b + sigma z, and the moments of the samples propagate exactly,
discretisation bias included. Every Monte Carlo check is seeded and allows 5 standard errors (a
false alarm about 1 in 10^6 per check).
"""
import math

import numpy as np
import pytest
import torch

import toy2d

T = 1000
SCHED = toy2d.make_schedule(T)
ABAR = toy2d.make_schedule(T, torch.float64)["alphas_cumprod"].numpy()   # the targets: float64
K = len(toy2d.MIX_W)


def within(value, target, se, k=5.0):
    """|value - target| < k standard errors, elementwise."""
    value, target, se = (np.asarray(v, dtype=np.float64) for v in (value, target, se))
    assert np.all(np.abs(value - target) < k * se), (value, target, se)


def exact(x, t, c):
    """The exact predictor with labels (K: none), as eps_fn(x, t, c) for toy2d.guided."""
    return toy2d.oracle_eps(x, t, SCHED, c)


def one_component(m, S, pairs, eta):
    """Exact mean and covariance of the samples of DDIM (Eq. 12, sigma_t from Eq. 16) over the
    steps `pairs`, started from N(0, I), when the data are N(m, S) and eps is exact:
    eps(x) = G (x - sqrt(a) m), G = sqrt(1-a) (a S + (1-a) I)^-1, so with
    x0_pred = (x - sqrt(1-a) eps) / sqrt(a) the step x' = sqrt(a') x0_pred + sqrt(1-a'-sigma^2) eps
    + sigma z is x' = A x + b + sigma z, A = sqrt(a'/a) I + c_eps G, b = -c_eps sqrt(a) G m,
    c_eps = sqrt(1-a'-sigma^2) - sqrt(a'(1-a)/a): mu' = A mu + b, P' = A P A^T + sigma^2 I.
    (a, a') = (abar_t, abar_t_prev), abar = 1 at t_prev = -1. DDPM is eta = 1 with t_prev = t - 1:
    then sigma^2 = beta~_t and Eq. 12 is DDPM Eq. 7 (pinned in tests/test_toy2d.py)."""
    eye, mu, P = np.eye(2), np.zeros(2), np.eye(2)
    for t, t_prev in pairs:
        a, a_prev = ABAR[t], (ABAR[t_prev] if t_prev >= 0 else 1.0)
        G = math.sqrt(1 - a) * np.linalg.inv(a * S + (1 - a) * eye)
        sigma2 = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        c_eps = math.sqrt(max(1 - a_prev - sigma2, 0)) - math.sqrt(a_prev * (1 - a) / a)
        A = math.sqrt(a_prev / a) * eye + c_eps * G
        mu, P = A @ mu - c_eps * math.sqrt(a) * G @ m, A @ P @ A.T + sigma2 * eye
    return mu, P


def check_components(x, c, targets):
    """Per class k: the sample mean and covariance of x[c == k] against targets[k] = (mu, P),
    5 s.e. of Gaussian sample moments: sqrt(P_ii / n) and sqrt((P_ii P_jj + P_ij^2) / n)."""
    x = x.double().numpy()
    for k, (mu, P) in enumerate(targets):
        xk, d = x[c.numpy() == k], np.diag(P)
        within(xk.mean(0), mu, np.sqrt(d / len(xk)))
        within(np.cov(xk.T), P, np.sqrt((np.outer(d, d) + P**2) / len(xk)))


def test_exact_conditional_predictor_and_guidance_at_w_0_and_minus_1():
    """eps*(x, t, k) = sqrt(1 - abar) (abar S_k + (1 - abar) I)^-1 (x - sqrt(abar) mu_k), here in
    float64 numpy from the code's float32 abar (float32 output: rtol 1e-5); label K is the
    unconditional eps*(x, t). Guidance
    (Eq. 6): w = 0 gives the conditional, w = -1 the unconditional predictor, w = 2 is
    3 eps_c - 2 eps_none, to float precision."""
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(300, 2, generator=gen)
    c = torch.randint(0, K, (300,), generator=gen)
    for t in (0, 400, 999):
        a = SCHED["alphas_cumprod"][t].item()
        for k in range(K):
            C = a * toy2d.MIX_COV[k] + (1 - a) * np.eye(2)
            d = x.double().numpy() - math.sqrt(a) * toy2d.MIX_MU[k]
            want = math.sqrt(1 - a) * np.linalg.solve(C, d.T).T
            got = toy2d.oracle_eps(x, t, SCHED, torch.full((300,), k))
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
        cond, uncond = exact(x, t, c), toy2d.oracle_eps(x, t, SCHED)
        torch.testing.assert_close(exact(x, t, torch.full((300,), K)), uncond)
        torch.testing.assert_close(toy2d.guided(exact, x, t, c, 0.0), cond)
        torch.testing.assert_close(toy2d.guided(exact, x, t, c, -1.0), uncond)
        torch.testing.assert_close(toy2d.guided(exact, x, t, c, 2.0), 3 * cond - 2 * uncond)


def test_network_guidance_is_one_batched_call_with_the_null_row_K():
    """A conditional MLP (K + 1 label rows, the last "none"; c None means none): guided() calls it
    once on [x; x] with labels [c; K], w = 0 is net(x, t, c), w = -1 net(x, t) to float32
    precision (batched and single calls may round differently), w = 2 3 out_c - 2 out_none."""
    torch.manual_seed(0)
    net, calls = toy2d.MLP(32, 2, K), []
    with torch.no_grad():
        net.label.weight.mul_(3)   # labels that matter: out_c and out_none differ by O(1)
    gen = torch.Generator().manual_seed(1)
    x, c = torch.randn(200, 2, generator=gen), torch.randint(0, K, (200,), generator=gen)

    def recorded(x, t, c):
        calls.append(c.clone())
        return net(x, t, c)
    with torch.no_grad():
        for t in (3, 700):
            cond, uncond = net(x, t, c), net(x, t)
            assert torch.equal(uncond, net(x, t, torch.full((200,), K)))
            assert (cond - uncond).abs().mean() > 0.1
            torch.testing.assert_close(toy2d.guided(recorded, x, t, c, 0.0), cond)
            torch.testing.assert_close(toy2d.guided(recorded, x, t, c, -1.0), uncond)
            torch.testing.assert_close(toy2d.guided(recorded, x, t, c, 2.0), 3 * cond - 2 * uncond)
    assert len(calls) == 6 and all(torch.equal(seen, torch.cat([c, torch.full_like(c, K)]))
                                   for seen in calls)


def test_an_unconditional_mlp_keeps_exactly_its_parameters():
    """K = 0 builds today's unconditional network, so its checkpoints and seeded runs are as
    before: the same parameter names in the same order, 3h + (h^2 + h) + b (2h + 3 (h^2 + h))
    + 4h + 2 numbers, drawn alike from the same seed; K > 0 adds only label.weight [K + 1, h]."""
    h, b = 16, 2
    torch.manual_seed(0)
    plain = toy2d.MLP(h, b).state_dict()
    torch.manual_seed(0)
    cond = toy2d.MLP(h, b, K).state_dict()
    names = ["inp.weight", "inp.bias", "time.0.weight", "time.0.bias"] + [
        f"blocks.{i}.{j}.{p}" for i in range(b) for j in range(4) for p in ("weight", "bias")] + [
        "out.0.weight", "out.0.bias", "out.2.weight", "out.2.bias"]
    assert list(plain) == names and list(cond) == names + ["label.weight"]
    count = 3 * h + (h * h + h) + b * (2 * h + 3 * (h * h + h)) + 4 * h + 2
    assert sum(v.numel() for v in plain.values()) == count
    assert all(torch.equal(plain[n], cond[n]) for n in names)
    assert cond["label.weight"].shape == (K + 1, h)


def test_ddpm_1000_with_the_exact_conditional_predictor_draws_each_component():
    """DDPM-1000 (Alg. 2) driven by eps*(x, t, k) samples N(mu_k, P_k), P_k from one_component:
    S_k plus DDPM's discretisation bias (up to -0.0065, 0.8 s.e. here: added to the target rather
    than ignored). All K components in one run, n = 1,000 each; 5 s.e. of Gaussian moments."""
    n = 1000
    c = torch.arange(K).repeat_interleave(n)
    cfg = toy2d.Config(data="mixture", n_samples=K * n)
    x, _ = toy2d.sample(lambda x, t: exact(x, t, c), SCHED, cfg, "ddpm", 1.0,
                        torch.Generator().manual_seed(4))
    pairs = toy2d.ddim_timesteps(T, T)   # (t, t - 1) for t = T-1 .. 0
    check_components(x, c, [one_component(m, S, pairs, 1.0)
                            for m, S in zip(toy2d.MIX_MU, toy2d.MIX_COV)])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_50_with_the_exact_conditional_predictor_matches_its_propagation(eta):
    """DDIM-50 with the exact conditional predictor (w = 0) samples exactly N(mu_k, P_k) of
    one_component for each class k. The discretisation bias is large here and the check sees it:
    P_k - S_k reaches -0.049 (eta 0) and -0.099 (eta 1), 18 and 38 s.e.; the means move by up to
    1.8 s.e. at eta 0. n = 10,000 per component; 5 s.e. of Gaussian moments."""
    n = 10_000
    c = torch.arange(K).repeat_interleave(n)
    cfg = toy2d.Config(data="mixture", ddim_steps=50, n_samples=K * n)
    x, _ = toy2d.sample(lambda x, t: exact(x, t, c), SCHED, cfg, "ddim", eta,
                        torch.Generator().manual_seed(5))
    pairs = toy2d.ddim_timesteps(T, 50)
    check_components(x, c, [one_component(m, S, pairs, eta)
                            for m, S in zip(toy2d.MIX_MU, toy2d.MIX_COV)])


def test_more_guidance_more_samples_of_the_class(monkeypatch):
    """Two overlapping classes, N(-+(0.5, 0), 0.5 I), weights 1/2: the Bayes classifier at t = 0
    is the sign of x_1. At w = 0, DDIM-50 (eta 0) for class 1 samples N(mu, P) of one_component,
    so the share classified 1 is Phi(mu_1 / sqrt(P_11)) = 0.769 (0.766 measured). Guidance aims
    at p(x | c) p(c | x)^w (Ho & Salimans Sec. 3.1-3.2: Eq. 6 is classifier guidance with the
    implicit classifier p(c | x) ~ p(x | c) / p(x)), so the share rises with w (measured 0.766,
    0.951, 1.000 at w = 0, 1, 3), each step by more than 5 binomial s.e. of the difference,
    sqrt(p (1-p) / n + p' (1-p') / n). n = 4,000 per w."""
    m, S = np.array([[-0.5, 0.0], [0.5, 0.0]]), np.array([0.5 * np.eye(2)] * 2)
    monkeypatch.setattr(toy2d, "MIX_W", np.array([0.5, 0.5]))
    monkeypatch.setattr(toy2d, "MIX_MU", m)
    monkeypatch.setattr(toy2d, "MIX_COV", S)
    n = 4000
    cfg, c = toy2d.Config(data="mixture", ddim_steps=50, n_samples=n), torch.ones(n, dtype=int)
    shares = []
    for w in (0.0, 1.0, 3.0):
        x, _ = toy2d.sample(lambda x, t: toy2d.guided(exact, x, t, c, w), SCHED, cfg, "ddim", 0.0,
                            torch.Generator().manual_seed(6))
        shares.append((toy2d.mixture_terms(x, 1.0)[0].argmax(1) == 1).double().mean().item())
    mu, P = one_component(m[1], S[1], toy2d.ddim_timesteps(T, 50), 0.0)
    p0 = (1 + math.erf(mu[0] / math.sqrt(2 * P[0, 0]))) / 2
    within(shares[0], p0, math.sqrt(p0 * (1 - p0) / n))
    for p, q in zip(shares, shares[1:]):
        assert q - p > 5 * math.sqrt((p * (1 - p) + q * (1 - q)) / n), shares


def test_label_dropout_in_training_happens_at_the_rate_asked(monkeypatch):
    """Ho & Salimans Alg. 1: each label is replaced by "none" (row K) with probability p_uncond.
    Count the labels the network sees in train(): 100 steps of 1,000, n = 100,000. The share of K
    is p_uncond = 0.3 within 5 s.e. (s.e. sqrt(p (1-p) / n) = 0.00145); every other label is that of
    its data point (a point's first coordinate is its label here)."""
    seen, forward = [], toy2d.MLP.forward
    monkeypatch.setattr(toy2d.MLP, "forward",
                        lambda self, x, t, c=None: seen.append(c) or forward(self, x, t, c))
    pairs, loss = [], toy2d.denoising_loss
    monkeypatch.setattr(toy2d, "denoising_loss",
                        lambda model, x0, sched, c, p: pairs.append((x0, c)) or loss(
                            model, x0, sched, c, p))
    torch.manual_seed(0)
    labels = torch.randint(0, K, (1000,))
    data = labels[:, None].float().expand(1000, 2)
    cfg = toy2d.Config(data="mixture", steps=100, batch=1000, hidden=16, blocks=1, p_uncond=0.3)
    toy2d.train(cfg, data, SCHED, labels)
    seen, x0 = torch.cat(seen), torch.cat([x0 for x0, _ in pairs])
    given = torch.cat([c for _, c in pairs])
    n, p = len(seen), cfg.p_uncond
    assert n == 100_000 and torch.equal(given, x0[:, 0].long())
    within((seen == K).double().mean(), p, math.sqrt(p * (1 - p) / n))
    assert torch.equal(seen[seen != K], given[seen != K])


# ------------------------------------------------------------------------------- command line
@pytest.mark.parametrize("argv", [
    "--data moons --label 0", "--data swiss_roll --guidance 0 2", "--data mixture --guidance 2",
    f"--data mixture --label {K}", "--data mixture --label -2"])
def test_label_and_guidance_need_the_mixture_and_a_component(argv):
    """One line, toy2d.py: problem -- fix, before any work."""
    with pytest.raises(SystemExit) as e:
        toy2d.check_config(toy2d.parse_config(argv.split()))
    message = e.value.code
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith("toy2d.py: --label") and "-- pass --data mixture --label 0" in message


@pytest.mark.parametrize("argv", [
    "--guidance 0 nan --data mixture --label 0", "--p-uncond 1.5", "--p-uncond nan",
    "--p-uncond 0", "--guidance 0 1e308 --data mixture --label 0"])
def test_bad_guidance_values_are_one_clear_line(argv):
    with pytest.raises(SystemExit) as e:
        toy2d.check_config(toy2d.parse_config(argv.split()))
    assert e.value.code.startswith(f"toy2d.py: {argv.split()[0]}")


@pytest.mark.parametrize("oracle", [True, False])
def test_a_guided_run_writes_one_picture_per_sampler(oracle, tmp_path, monkeypatch, capsys):
    """With --label: one picture of the class at each --guidance w and the samples [W, n, 2], named
    after what made them; per w one line with the share of the class and the mean."""
    monkeypatch.chdir(tmp_path)
    train = "--oracle" if oracle else "--steps 5 --hidden 16 --blocks 1"
    toy2d.main(toy2d.check_config(toy2d.parse_config(
        f"--data mixture --label 1 --guidance -1 0 2 --sampler ddim --ddim-steps 5 --etas 0 "
        f"--n-samples 64 {train}".split())))
    out = capsys.readouterr().out
    name = f"out/toy2d_mixture{'_oracle' * oracle}_label1_ddim5_eta0_guidance"
    assert [line[6:] for line in out.splitlines() if line.startswith("wrote")] == [name + ".png"]
    assert np.load(name + ".npy").shape == (3, 64, 2) and np.isfinite(np.load(name + ".npy")).all()
    for w in ("-1", "0", "2"):
        assert f"ddim5_eta0  w = {w}: " in out and "% class 1, mean" in out
