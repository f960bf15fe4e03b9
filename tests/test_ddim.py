"""Tests of ddim.py: the DDIM update against closed forms, an exact Gaussian oracle, ddpm.py's
ancestral sampler, and a tiny checkpoint written by ddpm.py's own save_checkpoint (CPU, seeded).

The oracle: for data x_0 ~ N(mu, s^2 I), x_t = sqrt(a) x_0 + sqrt(1 - a) eps ~ N(sqrt(a) mu,
a s^2 + 1 - a) with a = abar_t, so the best noise predictor is the posterior mean
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a),
and x0 and v follow from x_t = sqrt(a) x0 + sqrt(1 - a) eps, v = sqrt(a) eps - sqrt(1 - a) x0.
Every eta = 0 step with it is affine in x, so the sampler's exact output moments are computable.
Tolerances are 5 standard errors of the Monte Carlo estimate unless stated otherwise.
"""
import math
import re
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
import ddpm
from unet import UNet

MU, S = 0.3, 0.5  # the oracle's data distribution N(MU, S^2 I)
Z = 5  # tolerance in standard errors


def oracle(prediction, alphas_cumprod):
    """The exact network for data ~ N(MU, S^2): out(x_t, t) for eps, x0 or v prediction."""
    def net(x, t):
        a = alphas_cumprod[t[0]].double()
        eps = (1 - a).sqrt() * (x.double() - a.sqrt() * MU) / (a * S ** 2 + 1 - a)
        x0 = (x.double() - (1 - a).sqrt() * eps) / a.sqrt()
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        return {"eps": eps, "x0": x0, "v": v}[prediction].float()
    return net


def exact_eta0_moments(alphas_cumprod, pairs, m=0.0, v=1.0):
    """Mean and variance of the eta = 0 sampler's output from N(m, v), in float64 arithmetic.

    Per step, eps = c (x - sqrt(a) mu) with c = sqrt(1 - a) / (a s^2 + 1 - a), then
    x0 = (x - sqrt(1 - a) eps) / sqrt(a) and x' = sqrt(a') x0 + sqrt(1 - a') eps (DDIM Eq. 12,
    sigma = 0): x' = k x + b, written out here independently of ddim.py.
    """
    abar = alphas_cumprod.double().numpy()
    for t, t_prev in pairs:
        a, a_prev = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
        c = math.sqrt(1 - a) / (a * S ** 2 + 1 - a)
        k0, b0 = (1 - math.sqrt(1 - a) * c) / math.sqrt(a), math.sqrt(1 - a) * c * MU
        k = math.sqrt(a_prev) * k0 + math.sqrt(1 - a_prev) * c
        b = math.sqrt(a_prev) * b0 - math.sqrt(1 - a_prev) * c * math.sqrt(a) * MU
        m, v = k * m + b, k * k * v
    return m, v


def assert_moments(x, mean, var):
    """Sample mean and variance of x against a closed form, within Z standard errors:
    SE(mean) = sqrt(var / n), SE(sample variance) = var sqrt(2 / (n - 1)) for Gaussian x."""
    n, x = x.numel(), x.double()
    assert abs(x.mean().item() - mean) < Z * math.sqrt(var / n), (x.mean().item(), mean)
    assert abs(x.var().item() - var) < Z * var * math.sqrt(2 / (n - 1)), (x.var().item(), var)


def sigma_of(abar_t, abar_prev, eta):
    """sigma_t as ddim_step applies it: the noise's coefficient, x_prev(z = 1) - x_prev(z = 0)."""
    x_t, x0 = torch.zeros_like(abar_t), torch.zeros_like(abar_t)
    step = [ddim.ddim_step(x_t, x0, abar_t, abar_prev, eta, "x0", False, torch.full_like(x_t, z))
            for z in (1.0, 0.0)]
    return step[0][0] - step[1][0]


# --------------------------------------------------------------------------------------------------
# The copies of ddpm.py's code agree with it, and the timestep convention is the shared one.


def test_copies_agree_with_ddpm(tmp_path):
    for name, T in (("linear", 1000), ("linear", 50), ("cosine", 1000)):
        mine, theirs = ddim.make_schedule(name, T), ddpm.make_schedule(name, T)
        for k in theirs:
            torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=0)
    betas = ddim.make_schedule("linear", 50)["betas"]  # the convention, beta scaled by 1000 / T
    torch.testing.assert_close(betas, torch.tensor(np.linspace(2e-3, 0.4, 50), dtype=torch.float32))
    x_t, out, abar = torch.randn(3, 5), torch.randn(3, 5), torch.rand(3, 1) * 0.98 + 0.01
    for prediction in ("eps", "x0", "v"):
        for mine, theirs in zip(ddim.split_prediction(prediction, out, x_t, abar),
                                ddpm.split_prediction(prediction, out, x_t, abar)):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    # load_images is ddpm.load_folder that also takes a single file: same arrays on awkward inputs
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8)).save(tmp_path / "b.PNG")
    Image.fromarray(rng.integers(0, 65536, (12, 8), dtype=np.uint16)).save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)).save(tmp_path / "d.jpg")
    (tmp_path / "e.png").write_bytes(b"not an image")
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").convert("P").save(
        tmp_path / "sub" / "f.bmp")
    images, skipped, _ = ddpm.load_folder(str(tmp_path), 16)
    mine, theirs = ddim.load_images(str(tmp_path), 16), (np.stack(images), skipped)
    assert mine[1] == theirs[1] == 1 and mine[0].shape == (5, 16, 16, 3)
    np.testing.assert_array_equal(mine[0], theirs[0])
    one = ddim.load_images(str(tmp_path / "d.jpg"), 16)  # a single file, not a folder
    np.testing.assert_array_equal(one[0], theirs[0][3:4])


def test_uniform_spacing_is_the_shared_convention():
    """t_i = floor((T-1)(S-1-i)/(S-1) + 1/2), i = 0..S-1, in exact rationals here (ties round up,
    where round-half-to-even or float rounding differ), and ddpm.py's timesteps give the same
    list for every S (the rationals: every S up to T = 50, every 37th at T = 1000)."""
    for T in (1, 2, 7, 50, 1000):
        for S in range(1, T + 1):
            ts = [t for t, _ in ddim.timestep_pairs(T, S, "uniform")]
            assert ts == ddpm.timesteps(T, S).tolist(), (T, S)
            if T < 1000 or S % 37 == 1:
                assert ts == ([math.floor(Fraction((T - 1) * (S - 1 - i), S - 1) + Fraction(1, 2))
                               for i in range(S)] if S > 1 else [T - 1]), (T, S)
    assert [t for t, _ in ddim.timestep_pairs(10, 5, "uniform")] == [9, 7, 5, 2, 0]  # 6.75, 4.5


@pytest.mark.parametrize("spacing", ddim.SPACINGS)
def test_timestep_pairs(spacing):
    for T in (1, 2, 10, 50, 1000):
        for S in sorted({1, 2, 3, 7, 10, 49, T // 2, T - 1, T} & set(range(1, T + 1))):
            pairs = ddim.timestep_pairs(T, S, spacing)
            ts = [t for t, _ in pairs]
            assert len(pairs) == S and ts[0] == T - 1 and pairs[-1][1] == -1, (T, S, pairs)
            assert [p for _, p in pairs[:-1]] == ts[1:], (T, S)  # t_prev is the next step's t
            assert all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] >= 0, (T, S)  # no repeats
            if S == T:
                assert ts == list(range(T - 1, -1, -1))
    # the definitions: (T-1)(1 - i/(S-1))^2 rounded; round(T - i T/S) - 1
    assert [t for t, _ in ddim.timestep_pairs(1000, 4, "quadratic")] == [999, 444, 111, 0]
    assert [t for t, _ in ddim.timestep_pairs(1000, 10, "trailing")][-3:] == [299, 199, 99]


def test_sampler_consumes_exactly_the_pairs():
    seen = []
    pairs = ddim.timestep_pairs(1000, 7, "quadratic")
    ddim.ddim_sample(lambda x, t: seen.append(t.tolist()) or torch.zeros_like(x),
                     ddim.make_schedule("linear", 1000)["alphas_cumprod"], torch.randn(3, 2), pairs,
                     "eps")
    assert seen == [[t] * 3 for t, _ in pairs]


# --------------------------------------------------------------------------------------------------
# sigma (Eq. 16) and q_sigma (Eq. 7).


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_eta1_step_is_ddpm_posterior(schedule):
    """eta = 1: sigma_t^2 = beta_tilde = (1 - abar_prev) / (1 - abar_t) beta_t and the mean is
    DDPM's posterior mean (DDPM Eqs. 6-7) given x0, also for a skip t -> t_prev, where
    q(x_prev | x_t, x_0) has the same form. Exact, in float64; eta scales sigma linearly."""
    abar = ddim.make_schedule(schedule, 1000)["alphas_cumprod"].double()
    for steps in (1000, 37):
        t, t_prev = (torch.tensor(v) for v in zip(*ddim.timestep_pairs(1000, steps, "uniform")))
        abar_t, abar_prev = abar[t], torch.where(t_prev >= 0, abar[t_prev.clamp(min=0)], 1.0)
        x_t, x0 = torch.randn_like(abar_t), torch.randn_like(abar_t)
        mean, var = ddpm.posterior(x0, x_t, abar_t, abar_prev)
        torch.testing.assert_close(sigma_of(abar_t, abar_prev, 1.0), var.sqrt(), rtol=1e-9, atol=0)
        torch.testing.assert_close(sigma_of(abar_t, abar_prev, 0.3), 0.3 * var.sqrt())
        x_prev, _ = ddim.ddim_step(x_t, x0, abar_t, abar_prev, 1.0, "x0", False)
        torch.testing.assert_close(x_prev, mean, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("t, t_prev", [(999, 959), (500, 100), (60, 59), (40, 0)])
def test_q_sigma_keeps_the_marginal(eta, t, t_prev):
    """x_t ~ q(x_t | x_0), one step of Eq. 12 with the true x_0 (that is Eq. 7's q_sigma) gives
    x_prev ~ N(sqrt(abar_prev) x_0, (1 - abar_prev) I) (DDIM Lemma 1) for any eta and skip, and
    Cov(x_prev, x_t) = sqrt(1 - abar_prev - sigma^2) sqrt(1 - abar_t) (Eq. 7's mean), with
    sigma from Eq. 16 written out here. n = 400k draws; SE(sample covariance) =
    sqrt((var_prev var_t + cov^2) / n)."""
    n, x0 = 400_000, 0.7
    gen = torch.Generator().manual_seed(t)
    abar = ddim.make_schedule("linear", 1000)["alphas_cumprod"]
    abar_t, abar_prev = abar[t], abar[t_prev]
    x_t = abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * torch.randn(n, generator=gen)
    x_prev, _ = ddim.ddim_step(x_t, torch.full((n,), x0), abar_t, abar_prev, eta, "x0", False,
                               torch.randn(n, generator=gen))
    var_prev, a, a_prev = 1 - abar_prev.item(), abar_t.item(), abar_prev.item()
    assert_moments(x_prev, math.sqrt(a_prev) * x0, var_prev)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    cov = math.sqrt(max(var_prev - sigma ** 2, 0)) * math.sqrt(1 - a)
    u, w = x_prev.double(), x_t.double()
    sample_cov = ((u - u.mean()) * (w - w.mean())).mean()
    assert abs(sample_cov - cov) < Z * math.sqrt((var_prev * (1 - a) + cov ** 2) / n)
    # and t_prev = -1 returns x_0 itself: abar_prev = 1, sigma = 0.
    x_end, _ = ddim.ddim_step(x_t, torch.full((n,), x0), abar_t, torch.tensor(1.0), eta, "x0",
                              False, torch.randn(n, generator=gen))
    torch.testing.assert_close(x_end, torch.full((n,), x0))


# --------------------------------------------------------------------------------------------------
# The exact Gaussian oracle.


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ddim.SPACINGS)
def test_oracle_eta0_maps_noise_to_data(schedule, prediction, spacing):
    """eta = 0, 50 steps, the oracle network: x_T ~ N(0, I) becomes N(MU, S^2 I) up to the
    sampler's discretisation bias. The exact output moments of the discretised sampler (an affine
    map) are computed in float64: the Monte Carlo moments match them within 5 SE (n = 200k: SE of
    the std 0.0008), and they are within the stated bias of the target: the mean within 0.001
    (N(0, I) is not exactly q(x_T)), the std low by at most 0.03 at S = 50 (0.028 for linear and
    uniform; the bias is O(1/S): under 0.002 at S = 1000)."""
    n, gen = 200_000, torch.Generator().manual_seed(1)
    abar = ddim.make_schedule(schedule, 1000)["alphas_cumprod"]
    pairs = ddim.timestep_pairs(1000, 50, spacing)
    x = ddim.ddim_sample(oracle(prediction, abar), abar, torch.randn(n, generator=gen), pairs,
                         prediction, eta=0.0, clip=False)
    mean, var = exact_eta0_moments(abar, pairs)
    assert_moments(x, mean, var)
    assert abs(mean - MU) < 1e-3 and -0.03 < math.sqrt(var) - S < 0
    _, var_1000 = exact_eta0_moments(abar, ddim.timestep_pairs(1000, 1000, spacing))
    assert abs(math.sqrt(var_1000) - S) < 2e-3


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_oracle_inversion_round_trip(schedule, prediction):
    """Inversion (x_0 -> x_T) then sampling (x_T -> x_0) at eta = 0 returns x_0 with relative error
    ||x_rec - x_0|| / ||x_0|| < 6 / S. Why not 0: both directions are Euler steps of the same ODE
    (Eq. 13) but take eps at opposite ends of each interval, so each step is off by O(1/S^2) and
    the round trip by O(1/S): for this oracle 4.8 / S (linear), 2.6 / S (cosine). It is first
    order: doubling S halves the error."""
    gen = torch.Generator().manual_seed(2)
    abar = ddim.make_schedule(schedule, 1000)["alphas_cumprod"]
    x0 = MU + S * torch.randn(20_000, generator=gen)
    net, errors = oracle(prediction, abar), []
    for steps in (100, 200):
        pairs = ddim.timestep_pairs(1000, steps, "uniform")
        x_T = ddim.ddim_invert(net, abar, x0, pairs, prediction)
        assert abs(x_T.std().item() - 1) < 0.05  # the latent looks like the prior
        x_rec = ddim.ddim_sample(net, abar, x_T, pairs, prediction, eta=0.0, clip=False)
        errors.append(((x_rec - x0).norm() / x0.norm()).item())
        assert errors[-1] < 6 / steps, (steps, errors)
    assert 1.8 < errors[0] / errors[1] < 2.2, errors


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_eta1_all_steps_is_ddpm_ancestral(prediction):
    """eta = 1 over all T steps is DDPM's Algorithm 2: Eq. 12 with sigma^2 = beta_tilde is the
    posterior mean of DDPM Eq. 7 plus sigma noise. With the same noise stream the two samplers
    agree pathwise (clipping on); with independent noise their output moments agree within 5
    two-sample SE (n = 100k each, T = 200 to keep it fast)."""
    T, n, cpu = 200, 100_000, torch.device("cpu")
    sched = ddpm.make_schedule("linear", T)
    abar, cfg = sched["alphas_cumprod"], ddpm.Config(T=T, prediction=prediction, sample_steps=0)
    net, pairs = oracle(prediction, abar), ddim.timestep_pairs(T, T, "uniform")
    gen = torch.Generator().manual_seed(3)
    x_ddim = ddim.ddim_sample(net, abar, torch.randn(5000, generator=gen), pairs, prediction, 1.0,
                              True, lambda: torch.randn(5000, generator=gen))
    x_ddpm = ddpm.sample(net, sched, (5000,), cfg, cpu, torch.Generator().manual_seed(3), clip=True)
    torch.testing.assert_close(x_ddim, x_ddpm, atol=1e-4, rtol=1e-4)
    x_ddim = ddim.ddim_sample(net, abar, torch.randn(n, generator=gen), pairs, prediction, 1.0,
                              False, lambda: torch.randn(n, generator=gen))
    x_ddpm = ddpm.sample(net, sched, (n,), cfg, cpu, torch.Generator().manual_seed(4), clip=False)
    m1, m2, v1, v2 = x_ddim.mean(), x_ddpm.mean(), x_ddim.var(), x_ddpm.var()
    assert abs(m1 - m2) < Z * math.sqrt((v1 + v2) / n), (m1, m2)
    assert abs(v1 - v2) < Z * math.sqrt(2 * (v1 ** 2 + v2 ** 2) / (n - 1)), (v1, v2)
    assert abs(m1 - MU) < 0.01 and abs(v1.sqrt() - S) < 0.02  # and near the data


def test_slerp():
    """For z0, z1 of equal norm r at angle theta, slerp(a) keeps the norm r and sits at angle
    a theta from z0 (Shoemake 1985): both in closed form, to float32 precision."""
    gen = torch.Generator().manual_seed(5)
    z0, z1 = torch.randn(2, 3, 16, 16, generator=gen).double()
    z1 = z1 * z0.norm() / z1.norm()
    a = torch.linspace(0, 1, 7, dtype=torch.float64)
    z = ddim.slerp(z0, z1, a)
    theta = torch.arccos((z0 * z1).sum() / z0.norm() ** 2)
    torch.testing.assert_close(z[0], z0)
    torch.testing.assert_close(z[-1], z1)
    torch.testing.assert_close(z.flatten(1).norm(dim=1), z0.norm().expand(7))
    cos = (z.flatten(1) @ z0.flatten()) / (z.flatten(1).norm(dim=1) * z0.norm())
    torch.testing.assert_close(torch.arccos(cos.clamp(-1, 1)), a * theta, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# A tiny checkpoint written by ddpm.py's save_checkpoint, shared by the tests below.


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 16 px, T = 50 network with random weights (the output layer too, which the U-Net starts
    at zero), saved as `ddpm.py --train` saves, at step 2."""
    path = tmp_path_factory.mktemp("ddpm") / "ddpm.pt"
    cfg = ddpm.Config(image_size=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,),
                      T=50, prediction="eps")
    torch.manual_seed(0)
    net = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,))
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ddpm.save_checkpoint(str(path), dict(model=net, ema=net, opt=opt), cfg, 2, {})
    return path


def run(argv, capsys):
    """ddim.main(argv) -> what it printed."""
    ddim.main([str(a) for a in argv])
    return capsys.readouterr().out


def test_sample_grid_gif_and_pngs(ckpt, tmp_path, capsys):
    out = ["--ckpt", ckpt, "--out", tmp_path]
    run(out + ["--steps", "4", "--n", "3"], capsys)
    name = tmp_path / "ddim_ddpm_step2_uniform4_eta0_seed0"
    assert Image.open(f"{name}.png").size == (8 * 18 + 2, 18 + 2)
    assert Image.open(f"{name}.gif").n_frames >= 4  # Pillow merges the held frames
    # more than 64 images: one PNG each, in batches of 40, the last padded to a full one
    printed = run(out + ["--steps", "1", "--n", "65", "--batch", "40"], capsys)
    assert re.findall(r"sampled (\d+)/65", printed) == ["40", "65"]
    pngs = sorted((tmp_path / "ddim_ddpm_step2_uniform1_eta0_seed0_n65").glob("*.png"))
    assert len(pngs) == 65 and Image.open(pngs[-1]).size == (16, 16)
    # which are the images of the grid, in order
    grid = np.asarray(Image.open(tmp_path / "ddim_ddpm_step2_uniform1_eta0_seed0.png"))
    np.testing.assert_array_equal(grid[2 + 18:18 + 18, 2 + 3 * 18:18 + 3 * 18],
                                  np.asarray(Image.open(pngs[8 + 3])))
    # a v-prediction, cosine-schedule checkpoint samples too, and differently
    state = torch.load(ckpt, weights_only=True)
    state["config"].update(prediction="v", schedule="cosine")
    torch.save(state, tmp_path / "v.pt")
    run(["--ckpt", tmp_path / "v.pt", "--out", tmp_path, "--steps", "4", "--n", "3"], capsys)
    v = np.asarray(Image.open(tmp_path / "ddim_v_step2_uniform4_eta0_seed0.png"), float)
    assert np.abs(v - np.asarray(Image.open(f"{name}.png"), float)).mean() > 5


def test_a_long_batch_reports_its_steps(ckpt, capsys, monkeypatch):
    """A batch that takes minutes on a CPU is never silent: with a clock that moves 3 s per look,
    every other step (5 s or more after the last line) says which images, how far, since when."""
    clock = iter(range(0, 10_000, 3))
    monkeypatch.setattr(ddim.time, "time", lambda: next(clock))
    net, abar, c, _ = ddim.load_checkpoint(str(ckpt))
    ddim.sample_images(net, abar, c, ddim.Config(steps=6), 2, 3)
    assert re.findall(r"images 3-5: step (\d+)/6 \((\d+) s\)", capsys.readouterr().out) == [
        ("2", "6"), ("4", "12"), ("6", "18")]


def test_batch_does_not_change_the_images(ckpt):
    """Image k's starting and step noise come from a generator keyed on (seed, k): other batches
    change the images only by float32 rounding (convolutions of another batch size sum in
    another order), far below one uint8 level, 2/255."""
    net, abar, c, _ = ddim.load_checkpoint(str(ckpt))
    cfg = ddim.Config(steps=5, eta=0.5, seed=7)
    whole = ddim.sample_images(net, abar, c, cfg, 0, 5)
    parts = torch.cat([ddim.sample_images(net, abar, c, cfg, i, 2) for i in (0, 2, 4)])
    torch.testing.assert_close(parts[:5], whole, atol=1e-4, rtol=0)
    other_seed = ddim.sample_images(net, abar, c, replace(cfg, seed=8), 0, 5)
    assert (other_seed - whole).abs().mean() > 0.1


def test_compare_and_interp_reuse_the_starting_noises(ckpt, tmp_path, capsys, monkeypatch):
    """--compare: row r is the plain sample with that step count; --interp: the strip runs from
    image 0 to image 1 of the plain eta = 0 sample (slerp at a = 0 and 1 gives z0 and z1, up to
    float rounding: 1 uint8 level in fp32 on the CPU; CUDA's bf16 made it 4 levels on an H100)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = ["--ckpt", ckpt, "--out", tmp_path]
    run(out + ["--compare", "1,3,10", "--n", "4"], capsys)
    grid = np.asarray(Image.open(tmp_path / "ddim_ddpm_step2_uniform_compare1-3-10_eta0_seed0.png"))
    assert grid.shape[0] == 3 * 18 + 2 and grid.shape[1] > 4 * 18 + 2  # and a label margin
    margin = grid.shape[1] - (4 * 18 + 2)
    assert (grid[:, :margin] < 128).any()  # the labels are drawn
    run(out + ["--steps", "3", "--n", "4"], capsys)
    plain = np.asarray(Image.open(tmp_path / "ddim_ddpm_step2_uniform3_eta0_seed0.png"))
    np.testing.assert_array_equal(grid[18:18 + 20, margin:margin + 4 * 18 + 2],
                                  plain[:20, :4 * 18 + 2])
    run(out + ["--interp", "--steps", "3", "--eta", "1"], capsys)  # --interp runs at eta 0
    strip = np.asarray(Image.open(tmp_path / "ddim_ddpm_step2_uniform3_interp_seed0.png"), int)
    assert strip.shape == (18 + 2, 8 * 18 + 2, 3)
    assert np.abs(strip[2:18, 2:18] - plain[2:18, 2:18]).max() <= 1
    assert np.abs(strip[2:18, -18:-2] - plain[2:18, 20:36]).max() <= 1
    assert np.abs(strip[2:18, 20:36] - plain[2:18, 2:18]).mean() > 1  # the middle differs


def test_invert_reports_the_psnr_of_what_it_writes(ckpt, tmp_path, capsys):
    """The printed PSNR, 10 log10(2^2 / MSE) per image on [-1, 1], matches the one recomputed
    from the written input | reconstruction grid to 0.05 dB (the grid is rounded to uint8)."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / f"{k}.png")
    out = ["--ckpt", ckpt, "--out", tmp_path, "--steps", "10"]
    for path, n in ((images, 3), (images / "1.png", 1)):
        printed = run(out + ["--invert", path], capsys)
        psnr = re.search(r"PSNR ([\d.]+) dB \(worst ([\d.]+)\)", printed)
        mean, worst = map(float, psnr.groups())
        name = f"ddim_ddpm_step2_uniform10_invert_{path.stem}.png"
        grid = np.asarray(Image.open(tmp_path / name), float) / 127.5 - 1
        assert grid.shape[:2] == (-(-2 * n // 8) * 18 + 2, 8 * 18 + 2)
        cells = [grid[2:18, 2 + 18 * k:18 + 18 * k] for k in range(2 * n)]
        psnr = [10 * math.log10(4 / np.mean((cells[2 * k] - cells[2 * k + 1]) ** 2))
                for k in range(n)]
        assert abs(np.mean(psnr) - mean) < 0.05 and abs(min(psnr) - worst) < 0.05, (psnr, printed)


@pytest.mark.parametrize("argv, says", [
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--steps", "51"], "--steps 51: "),
    (["--eta", "nan"], "--eta nan: must be a finite number"),
    (["--eta", "inf"], "--eta inf: must be a finite number"),
    (["--eta", "-0.5"], "--eta -0.5: must be in [0, 1]"),
    (["--batch", "0"], "--batch 0"),
    (["--seed", "-1"], "--seed -1"),
    (["--spacing", "leading"], "--spacing"),
    (["--compare", "5,51"], "--compare 5,51: "),
    (["--compare", "0,5"], "--compare 0,5: "),
    (["--compare", "a,b"], "--compare"),
    (["--compare", "5", "--interp"], "separate runs"),
    (["--invert", "no/such.png"], "no readable images"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--ckpt", "vae.pt"], "vae.pt is not a ddpm.py checkpoint"),
    (["--ckpt", "junk.pt"], "cannot read junk.pt"),
    (["--ckpt", "missing.pt"], "cannot read missing.pt (FileNotFoundError"),
    (["--ckpt", "small.pt"], "config and weights do not fit"),
])
def test_bad_input_is_one_line_before_any_work(argv, says, ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"kind": "vae", "config": {}, "model": {}}, "vae.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    state = torch.load(ckpt, weights_only=True)
    state["config"]["ch"] = 8  # weights of a wider network than its config says
    torch.save(state, "small.pt")
    if "--ckpt" not in argv:
        argv = ["--ckpt", str(ckpt)] + argv
    with pytest.raises(SystemExit) as e:
        ddim.main(argv + ["--out", "out"])
    message = str(e.value.code)
    assert message.startswith("ddim.py: ") and "\n" not in message and says in message, message
    assert not any((tmp_path / "out").glob("*"))  # nothing written


def test_an_unwritable_out_stops_before_sampling(ckpt, tmp_path, as_command):
    """The command line: exit status 1, one line on stderr, no traceback, nothing created."""
    (tmp_path / "file").write_text("")  # a file where the folder should be
    r = as_command("ddim.py", "--ckpt", str(ckpt), "--out", str(tmp_path / "file" / "out"))
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("ddim.py: --out ") and "Not a directory" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
