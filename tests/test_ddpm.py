"""DDPM's math against closed forms and Monte Carlo estimates, and ddpm.py's command line.

Every statistical check is seeded and its tolerance is 5 standard errors of the estimate: for a
mean of M draws with variance v, se = sqrt(v / M); for a variance estimate,
se = v sqrt(2 / (M - 1)) (Gaussian).
"""
import math

import numpy as np
import pytest
import torch

import ddpm
from unet import UNet

Z = 5.0  # tolerances are Z standard errors


def moments_ok(samples, mean, var, what):
    """Mean and variance of a 1-D float64 sample against closed forms, within Z standard errors."""
    M = samples.numel()
    m, v = samples.mean().item(), samples.var().item()
    assert abs(m - mean) < Z * math.sqrt(var / M), f"{what}: mean {m:.5f} vs {mean:.5f}"
    assert abs(v - var) < Z * var * math.sqrt(2 / (M - 1)), f"{what}: var {v:.6f} vs {var:.6f}"


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_process_matches_q_xt_given_x0(schedule):
    """Run the Markov chain x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (DDPM Eq. 2) step
    by step from a fixed x0 and compare x_t at several t with q(x_t | x0) =
    N(sqrt(abar_t) x0, 1 - abar_t) as ddpm.q_sample draws it (Eq. 4). 40,000 chains."""
    T, M, x0 = 1000, 40_000, 0.8
    sched = ddpm.make_schedule(schedule, T)
    gen = torch.Generator().manual_seed(0)
    betas = sched["betas"].double()
    x = torch.full((M,), x0, dtype=torch.float64)
    check = {0, 1, 9, 99, 499, 999}
    for t in range(T):
        x = ((1 - betas[t]).sqrt() * x
             + betas[t].sqrt() * torch.randn(M, generator=gen, dtype=torch.float64))
        if t in check:  # q_sample is affine in eps: its mean at eps = 0, its std at x0 = 0, eps = 1
            tt = torch.tensor([t])
            mean = ddpm.q_sample(sched, torch.full((1, 1), x0), tt, torch.zeros(1, 1)).item()
            std = ddpm.q_sample(sched, torch.zeros(1, 1), tt, torch.ones(1, 1)).item()
            moments_ok(x, mean, std ** 2, f"{schedule} t={t}")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("t,t_prev", [(0, -1), (1, 0), (10, 9), (500, 499), (999, 998), (600, 450)])
def test_posterior_matches_regression_of_joint_samples(schedule, t, t_prev):
    """Draw (x_prev, x_t) | x0 from the forward process, regress x_prev on x_t, and compare slope,
    intercept and residual variance with q(x_prev | x_t, x0) = N(c0 x0 + c1 x_t, beta_tilde) (DDPM
    Eqs. 6-7; a skip t -> t_prev as in IDDPM's respacing). OLS standard errors:
    se(slope) = s/sqrt(Sxx), se(intercept) = s sqrt(1/M + xbar^2/Sxx), se(s^2) = s^2 sqrt(2/(M-2)).
    400,000 pairs."""
    M, x0 = 400_000, -0.6
    sched = ddpm.make_schedule(schedule, 1000)
    a_t = ddpm.abar_at(sched, torch.tensor([t])).double()
    a_prev = ddpm.abar_at(sched, torch.tensor([t_prev])).double()
    gen = torch.Generator().manual_seed(1)
    noise = lambda: torch.randn(M, generator=gen, dtype=torch.float64)  # noqa: E731
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * noise()
    x_t = (a_t / a_prev).sqrt() * x_prev + (1 - a_t / a_prev).sqrt() * noise()
    xbar, ybar = x_t.mean(), x_prev.mean()
    sxx = ((x_t - xbar) ** 2).sum()
    slope = ((x_t - xbar) * (x_prev - ybar)).sum() / sxx
    intercept = ybar - slope * xbar
    s2 = ((x_prev - intercept - slope * x_t) ** 2).sum() / (M - 2)
    # the closed form, read off ddpm.posterior: mean(x_t = 0) is c0 x0, mean(1) - mean(0) is c1
    a_t, a_prev = a_t.float().view(1, 1), a_prev.float().view(1, 1)
    m0, var = ddpm.posterior(torch.full((1, 1), x0), torch.zeros(1, 1), a_t, a_prev)
    m1, _ = ddpm.posterior(torch.full((1, 1), x0), torch.ones(1, 1), a_t, a_prev)
    c0x0, c1, var = m0.item(), (m1 - m0).item(), var.item()
    assert abs(slope - c1) < Z * math.sqrt(s2 / sxx) + 1e-9, f"slope {slope:.6f} vs {c1:.6f}"
    se_i = math.sqrt(s2 * (1 / M + xbar ** 2 / sxx))
    assert abs(intercept - c0x0) < Z * se_i + 1e-6, f"intercept {intercept:.6f} vs {c0x0:.6f}"
    assert abs(s2 - var) < Z * var * math.sqrt(2 / (M - 2)) + 1e-9, f"var {s2:.3e} vs {var:.3e}"


def oracle(prediction, sched, mu, s):
    """The exact minimiser of L_simple for data ~ N(mu, s^2 I): x_t ~ N(sqrt(abar) mu,
    abar s^2 + 1 - abar), so E[x0 | x_t] = mu + sqrt(abar) s^2 (x_t - sqrt(abar) mu) /
    (abar s^2 + 1 - abar), and the eps and v predictors follow from Eq. 4 and v's definition
    (written out here, not via ddpm.py)."""
    def model(x, t):
        a = ddpm.bcast(ddpm.abar_at(sched, t), x).double()
        x = x.double()
        x0 = mu + a.sqrt() * s ** 2 * (x - a.sqrt() * mu) / (a * s ** 2 + 1 - a)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction].float()
    return model


def exact_sampler_moments(betas, mu, s, steps, var):
    """Mean and std of Algorithm 2's output with the oracle, by exact recursion. With Gaussian data
    every step is affine: x_prev = A x_t + B + sigma z, so m <- A m + B and v <- A^2 v + sigma^2
    (float64). This is the discretised sampler's own answer; it differs from (mu, s) by the bias
    printed below."""
    abar = np.cumprod(1 - np.asarray(betas, np.float64))
    ts = ddpm.timesteps(len(abar), steps).tolist()
    m, v = 0.0, 1.0
    for i, t in enumerate(ts):
        a, ap = abar[t], (abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        # E[x0 | x_t] = k x_t + (mu - k sqrt(a) mu)
        k = math.sqrt(a) * s ** 2 / (a * s ** 2 + 1 - a)
        beta = 1 - a / ap
        c0, c1 = math.sqrt(ap) * beta / (1 - a), math.sqrt(1 - beta) * (1 - ap) / (1 - a)
        sigma2 = (0.0 if i + 1 == len(ts)
                  else ((1 - ap) / (1 - a) * beta if var == "small" else beta))
        m, v = ((c0 * k + c1) * m + c0 * (mu - k * math.sqrt(a) * mu),
                (c0 * k + c1) ** 2 * v + sigma2)
    return m, math.sqrt(v)


@pytest.mark.parametrize("prediction,schedule,var,steps", [
    ("eps", "linear", "small", 1000), ("x0", "cosine", "large", 1000),
    ("v", "linear", "large", 1000), ("eps", "cosine", "small", 100), ("eps", "linear", "large", 1),
    ("v", "linear", "large", 10)])  # 10 steps: beta and beta_tilde far apart
def test_sampler_with_exact_oracle_reaches_the_data_distribution(prediction, schedule, var, steps):
    """Drive the real sampler (ddpm.sample) with the closed-form optimal predictor for data
    ~ N(mu, s^2 I). Its output must have the mean and std of the exact recursion (5 standard errors
    of 100,000 draws: se(mean) = s/sqrt(M), se(std) = s/sqrt(2M)), and that recursion must be within
    1.5% of (mu, s) at 1000 steps, 4% at 100 respaced ones: the bias of discrete steps with the
    fixed variances of Sec. 3.2 (std 0.4961 for linear/small at 1000 steps, 0.4823 for cosine/small
    at 100). A single step (from x_T straight to x_0, which must add no noise) and 10 steps with
    the large variance (where beta and beta_tilde are far apart) are far from (mu, s) but still
    have an exact answer."""
    mu, s, M = 0.3, 0.5, 100_000
    cfg = ddpm.Config(T=1000, schedule=schedule, prediction=prediction, var=var, sample_steps=steps)
    sched = ddpm.make_schedule(schedule, cfg.T)
    gen = torch.Generator().manual_seed(2)
    x = ddpm.sample(oracle(prediction, sched, mu, s), sched, (M // 100, 1, 10, 10), cfg,
                    torch.device("cpu"), gen, clip=False).double().flatten()
    m_exact, s_exact = exact_sampler_moments(sched["betas"].numpy(), mu, s, steps, var)
    bias = {1000: 0.015, 100: 0.04, 10: math.inf, 1: math.inf}[steps]
    assert abs(m_exact - mu) < 1e-3 and abs(s_exact - s) < bias * s, (m_exact, s_exact)
    assert abs(x.mean().item() - m_exact) < Z * s_exact / math.sqrt(M), (x.mean().item(), m_exact)
    assert abs(x.std().item() - s_exact) < Z * s_exact / math.sqrt(2 * M), (x.std().item(), s_exact)


def test_eq11_mean_equals_posterior_mean_of_predicted_x0():
    """Eq. 11, mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t), is the posterior mean
    (Eq. 7) at x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): the route the sampler takes. Exact
    in float64."""
    betas = ddpm.make_schedule("linear", 1000)["betas"].double()
    abar = torch.cumprod(1 - betas, 0)  # float64, so that abar_t / abar_{t-1} = 1 - beta_t exactly
    gen = torch.Generator().manual_seed(3)
    for t in (0, 1, 250, 999):
        x_t, eps = torch.randn(2, 4, 5, generator=gen, dtype=torch.float64)
        a, beta = abar[t], betas[t]
        ap = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        x0, _ = ddpm.split_prediction("eps", eps, x_t, a)
        mean, _ = ddpm.posterior(x0, x_t, a, ap)
        eq11 = (x_t - beta / (1 - a).sqrt() * eps) / (1 - beta).sqrt()
        torch.testing.assert_close(mean, eq11, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_conversions_round_trip(prediction):
    """split_prediction inverts training_target: the target from (x0, eps) gives back (x0, eps)."""
    gen = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(2, 8, 3, 4, 4, generator=gen, dtype=torch.float64)
    abar = torch.rand(8, 1, 1, 1, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    out = ddpm.training_target(prediction, x0, eps, abar)
    x0_back, eps_back = ddpm.split_prediction(prediction, out, x_t, abar)
    torch.testing.assert_close(x0_back, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_back, eps, rtol=1e-9, atol=1e-9)


def test_min_snr_weights_agree_across_parameterisations():
    """Min-SNR-gamma (Hang et al. 2023): a prediction of x0 costs min(snr, gamma) ||x0 - x0_hat||^2
    whichever space the loss is written in: ||eps err||^2 = snr ||x0 err||^2,
    ||v err||^2 = (snr + 1) ||x0 err||^2. So the weighted eps-, x0- and v-losses of the same
    prediction must be equal."""
    gen = torch.Generator().manual_seed(5)
    x0, eps, x0_hat = torch.randn(3, 16, 3, 4, 4, generator=gen, dtype=torch.float64)
    abar = torch.linspace(0.001, 0.999, 16, dtype=torch.float64)
    a = abar.view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    eps_hat = (x_t - a.sqrt() * x0_hat) / (1 - a).sqrt()
    losses = []
    for p in ("eps", "x0", "v"):
        target = ddpm.training_target(p, x0, eps, a)
        pred = ddpm.training_target(p, x0_hat, eps_hat, a)
        losses.append(ddpm.loss_weight(p, abar, 5.0) * (pred - target).square().mean(dim=(1, 2, 3)))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=0)
    torch.testing.assert_close(losses[2], losses[1], rtol=1e-9, atol=0)
    assert torch.equal(ddpm.loss_weight("eps", abar, 0.0), torch.ones_like(abar))
    snr = abar / (1 - abar)  # and in x0 units the weight is min(snr, gamma) itself
    torch.testing.assert_close(ddpm.loss_weight("x0", abar, 5.0),
                               torch.minimum(snr, torch.tensor(5.0)))


def test_schedules():
    """Linear: beta from 1e-4 to 0.02 (DDPM Sec. 4). Cosine: abar_t = f(t)/f(0) (IDDPM Eq. 17) until
    beta reaches its 0.999 cap near t = T. Both: abar strictly decreasing, near 0 at T."""
    lin = ddpm.make_schedule("linear", 1000)
    assert math.isclose(lin["betas"][0].item(), 1e-4, rel_tol=1e-6)
    assert math.isclose(lin["betas"][-1].item(), 0.02, rel_tol=1e-6)
    cos = ddpm.make_schedule("cosine", 1000)
    s, t = 0.008, np.arange(1, 1001)
    f = lambda u: np.cos((u / 1000 + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    uncapped = cos["betas"].numpy() < 0.999
    np.testing.assert_allclose(cos["alphas_cumprod"].numpy()[uncapped], (f(t) / f(0))[uncapped],
                               rtol=1e-5)
    assert cos["betas"].max().item() == pytest.approx(0.999) and not uncapped.all()
    for sched in (lin, cos):
        abar = sched["alphas_cumprod"]
        assert (abar[1:] < abar[:-1]).all() and abar[-1] < 1e-4 and abar[0] > 0.99
        assert sched["alphas_cumprod"].dtype == torch.float32


def test_timesteps_cover_the_range_without_duplicates():
    """t_i = floor((T-1)(S-1-i)/(S-1) + 1/2): each within 1/2 of the exact even spacing, ties
    rounded up (checked in exact fractions), strictly decreasing from T-1 to 0."""
    from fractions import Fraction
    for T, S in [(1000, 1), (1000, 2), (1000, 10), (1000, 50), (1000, 999), (1000, 1000), (12, 5)]:
        ts = ddpm.timesteps(T, S).tolist()
        assert len(ts) == S and ts[0] == T - 1 and (S == 1 or ts[-1] == 0)
        assert all(a > b for a, b in zip(ts, ts[1:]))
        for i, t in enumerate(ts[1:], 1):
            exact = Fraction((T - 1) * (S - 1 - i), S - 1)
            assert -Fraction(1, 2) < t - exact <= Fraction(1, 2)
    assert ddpm.timesteps(12, 5).tolist() == [11, 8, 6, 3, 0]  # 8.25, 5.5 (a tie: up), 2.75


def test_one_training_step_moves_the_ema(tmp_path, monkeypatch):
    """After one step the EMA is beta ema_0 + (1 - beta) theta_1, ema_0 being the initial weights
    (rebuilt from the seed); and beta^(halflife / batch) = 1/2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ddpm, "ema_beta", lambda cfg, nimg: 0.9)
    torch._dynamo.reset()  # on a GPU, earlier compiles make the shapes dynamic: Inductor fails
    tiny = ["--ch", "16", "--ch-mult", "1,2", "--attn-levels", "1", "--batch", "2", "--n-images",
            "4", "--image-size", "8", "--T", "50", "--sample-steps", "2", "--steps", "1",
            "--warmup", "0", "--lr", "1e-2"]  # a step that moves the weights well past rounding
    ddpm.main(["--train", *tiny])
    ckpt = torch.load("ddpm.pt", map_location="cpu", weights_only=True)  # trained on CUDA if any
    torch.manual_seed(0)
    start = ddpm.build_model(ddpm.Config(**ckpt["config"])).state_dict()
    for k, theta in ckpt["model"].items():
        torch.testing.assert_close(ckpt["ema"][k], 0.9 * start[k] + 0.1 * theta)
    moved = max((start[k] - v).abs().max().item() for k, v in ckpt["model"].items())
    assert moved > 5e-3  # Adam's first step moves weights by about lr: 0.1 vs 0.9 tells apart
    cfg = ddpm.Config(batch=128, ema_halflife_kimg=10)
    monkeypatch.undo()
    assert ddpm.ema_beta(cfg, 10**6) ** (10_000 / 128) == pytest.approx(0.5)  # 10 kimg
    assert ddpm.ema_beta(cfg, 20_000) ** (2_000 / 128) == pytest.approx(0.5)  # 10% of 20,000


def graphed_gradients_match_eager(device, cfg):
    """The compiled training network (CUDA graphs on a GPU) against the eager one, for two fixed
    batches in turn, A B A B A: the first call runs the compiled code, the second records the
    graphs, the rest replay them. Each call's gradient must match the eager gradient of its own
    batch, to bf16's rounding (both run under autocast; measured 2.6e-3 for the default U-Net on an
    H200) and far closer than the two batches' gradients are to each other: a replay that kept the
    recorded batch, or gradients overwritten by the next step, would fail."""
    torch.manual_seed(0)
    model = ddpm.build_model(cfg).to(device, memory_format=torch.channels_last)
    with torch.no_grad():  # the zero-initialised output conv would hide every other gradient
        for q in model.parameters():
            q.add_(0.02 * torch.randn_like(q))
    x0 = torch.rand(cfg.batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    x0 = x0.contiguous(memory_format=torch.channels_last)
    sched = {k: v.to(device) for k, v in ddpm.make_schedule(cfg.schedule, cfg.T).items()}
    torch._dynamo.reset()  # earlier tests' compiles could reach the recompile limit: eager, vacuous
    net = ddpm.compile_for_training(model, cuda_graphs=device.type == "cuda")

    def gradient(m, seed):
        if m is net and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # as the training loop does
        torch.manual_seed(seed)  # t and eps
        ddpm.diffusion_loss(m, sched, x0, cfg).backward()
        g = torch.cat([p.grad.flatten().float() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
        return g

    eager = {seed: gradient(model, seed) for seed in (1, 2)}
    apart = ((eager[1] - eager[2]).norm() / eager[2].norm()).item()
    assert apart > 0.3, f"the two batches' gradients differ by only {apart:.3f}"
    for call, seed in enumerate((1, 2, 1, 2, 1)):
        err = ((gradient(net, seed) - eager[seed]).norm() / eager[seed].norm()).item()
        assert err < 2e-2, f"call {call}: {err:.2e} off the eager gradient ({apart:.2f} apart)"
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_training_matches_eager_gradients():
    cfg = ddpm.Config(ch=32, ch_mult=(1, 2), attn_levels=(1,), num_res_blocks=1, batch=16,
                      image_size=16)
    graphed_gradients_match_eager(torch.device("cuda"), cfg)


def test_diffusion_loss_draws_t_uniformly_and_pairs_it_with_x_t():
    """L_simple's pieces (Alg. 1): t ~ U{0..T-1} (each count within 5 binomial standard errors of
    B/T); the network sees x_t of that very t (a "network" that inverts Eq. 4 for x0 = 0,
    eps = x_t / sqrt(1 - abar_t), makes the eps loss 0); and the v target: with x0 = 0 and a zero
    output each image's mse is abar_t c, c the mean of 4 squared normals, so the loss has mean
    E[abar_t] and variance (1.5 E[abar_t^2] - E[abar_t]^2) / B (E[c^2] = 1 + 2/4)."""
    T, B = 50, 20_000
    sched, x0, seen = ddpm.make_schedule("linear", T), torch.zeros(B, 1, 2, 2), []

    def inverter(x_t, t, c=None):
        seen.append(t)
        return x_t / (1 - ddpm.bcast(ddpm.abar_at(sched, t), x_t)).sqrt()
    torch.manual_seed(0)
    assert ddpm.diffusion_loss(inverter, sched, x0, ddpm.Config(T=T, prediction="eps")) < 1e-10
    counts, p = torch.bincount(seen[0], minlength=T).double(), 1 / T
    assert len(counts) == T and ((counts - B * p).abs() < Z * math.sqrt(B * p * (1 - p))).all()
    zero = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    loss = ddpm.diffusion_loss(zero, sched, x0, ddpm.Config(T=T, prediction="v")).item()
    abar = sched["alphas_cumprod"].double()
    se = math.sqrt((1.5 * (abar ** 2).mean() - abar.mean() ** 2).item() / B)
    assert abs(loss - abar.mean().item()) < Z * se, (loss, abar.mean().item())


def test_a_batch_keeps_each_image_with_its_label():
    """get_batch draws images and labels with one index: image i is filled with 5 x label i, so
    the label can be read back from the pixels, flipped or not."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(13, (50,), generator=gen)
    data = (5 * labels).to(torch.uint8)[:, None, None, None].expand(50, 4, 4, 3).contiguous()
    torch.manual_seed(1)
    x0, c = ddpm.get_batch(data, 200, True, labels)
    assert torch.equal(((x0 + 1) * 127.5 / 5).round().long()[:, 0, 0, 0], c)


@pytest.mark.parametrize("w", [0.0, -1.0, 2.0])
def test_guided_ancestral_sampling_is_eq_6_through_the_sampler(w):
    """ddpm.sample with labels c runs Algorithm 2 on (1 + w) net(x, t, c) - w net(x, t): at w = 0
    the conditional network, at w = -1 the unconditional one; the same noises, float precision."""
    torch.manual_seed(0)
    net = UNet(ch=16, ch_mult=(1, 2), attn_levels=(1,), num_classes=3).eval()
    with torch.no_grad():
        for p in net.parameters():  # the zero-initialised last layers would hide the labels
            if not p.any():
                p.add_(0.02 * torch.randn_like(p))
    sched, c = ddpm.make_schedule("linear", 50), torch.tensor([0, 1, 2, 1])
    cfg, cpu = ddpm.Config(T=50, sample_steps=5, guidance=w), torch.device("cpu")
    run = lambda model, c=None: ddpm.sample(  # noqa: E731
        model, sched, (4, 3, 8, 8), cfg, cpu, torch.Generator().manual_seed(3), c=c)
    ours = run(net, c)
    assert (ours - run(lambda x, t: (1 + w) * net(x, t, c) - w * net(x, t))).abs().max() < 1e-4
    assert w == -1 or (ours - run(net, (c + 1) % 3)).abs().max() > 1e-3  # labels matter


@pytest.mark.parametrize("p_uncond", [0.1, 0.5])
def test_label_dropout_happens_at_the_rate_asked(p_uncond):
    """CFG Alg. 1: each label becomes K ("no label") with probability p_uncond, independently; the
    others are kept. Over B = 20,000 labels the count of K is Binomial(B, p): within 5 standard
    errors sqrt(B p (1 - p)) of B p (at p = 0.1: 2,000 +- 212)."""
    T, B, K = 50, 20_000, 13
    c, seen = torch.randint(K, (B,), generator=torch.Generator().manual_seed(1)), []
    torch.manual_seed(0)
    spy = lambda x, t, c=None: seen.append(c) or torch.zeros_like(x)  # noqa: E731
    cfg = ddpm.Config(T=T, p_uncond=p_uncond)
    ddpm.diffusion_loss(spy, ddpm.make_schedule("linear", T), torch.zeros(B, 1, 2, 2), cfg, c, K)
    dropped = seen[0] == K
    assert abs(dropped.sum().item() - B * p_uncond) < Z * math.sqrt(B * p_uncond * (1 - p_uncond))
    assert torch.equal(seen[0][~dropped], c[~dropped])  # the rest keep their own label
