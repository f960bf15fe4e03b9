"""Tests of ddim.py: the DDIM update against closed forms, an exact Gaussian oracle, ddpm.py's
ancestral sampler, and a tiny checkpoint written by `ddpm.py --train` (CPU, seeded).

The oracle: for data x_0 ~ N(mu, s^2 I), x_t = sqrt(a) x_0 + sqrt(1 - a) eps ~ N(sqrt(a) mu,
a s^2 + 1 - a) with a = abar_t, so the best noise predictor is the posterior mean
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a),
and x0 and v follow from x_t = sqrt(a) x0 + sqrt(1 - a) eps, v = sqrt(a) eps - sqrt(1 - a) x0.
Every eta = 0 step with it is affine in x, so the sampler's exact output moments are computable.
Tolerances are 5 standard errors of the Monte Carlo estimate unless stated otherwise.
"""
import inspect
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
import ddpm

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


# --------------------------------------------------------------------------------------------------
# The copies of ddpm.py's code agree with it.


def test_copies_agree_with_ddpm(tmp_path):
    for name in ("make_schedule", "split_prediction", "grid_array", "to_uint8"):
        assert inspect.getsource(getattr(ddim, name)) == inspect.getsource(getattr(ddpm, name))
    assert ddim.IMAGE_EXTS == ddpm.IMAGE_EXTS
    # load_images is ddpm.load_folder that also takes a single file: same arrays on awkward inputs.
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8)).save(tmp_path / "b.PNG")
    Image.fromarray(rng.integers(0, 65536, (12, 8), dtype=np.uint16)).save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)).save(tmp_path / "d.jpg")
    (tmp_path / "e.png").write_bytes(b"not an image")
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").convert("P").save(
        tmp_path / "sub" / "f.bmp")
    mine, theirs = ddim.load_images(str(tmp_path), 16), ddpm.load_folder(str(tmp_path), 16)
    assert mine[1] == theirs[1] == 1 and mine[0].shape == (5, 16, 16, 3)
    np.testing.assert_array_equal(mine[0], theirs[0])
    one = ddim.load_images(str(tmp_path / "d.jpg"), 16)  # a single file, not a folder
    np.testing.assert_array_equal(one[0], theirs[0][3:4])


# --------------------------------------------------------------------------------------------------
# The timestep list: one function, and the sampler consumes exactly its list.


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
    assert ddim.timestep_pairs(10, 4, "uniform") == [(9, 6), (6, 3), (3, 0), (0, -1)]
    assert ddim.timestep_pairs(1000, 10, "trailing")[-2:] == [(199, 99), (99, -1)]


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
def test_sigma_eta1_is_ddpm_posterior_std(schedule):
    """eta = 1: sigma_t^2 = beta_tilde = (1 - abar_prev) / (1 - abar_t) beta_t (DDPM Eq. 7), also
    for a skip t -> t_prev, where DDPM's posterior q(x_prev | x_t, x_0) has the same form."""
    abar = ddim.make_schedule(schedule, 1000)["alphas_cumprod"].double()
    for S in (1000, 37):
        pairs = ddim.timestep_pairs(1000, S, "uniform")
        t, t_prev = (torch.tensor(v) for v in zip(*pairs))
        abar_t, abar_prev = abar[t], torch.where(t_prev >= 0, abar[t_prev.clamp(min=0)], 1.0)
        _, var = ddpm.posterior(0, 0, abar_t, abar_prev)
        sigma = ddim.ddim_sigma(abar_t, abar_prev, 1.0)
        torch.testing.assert_close(sigma, var.sqrt(), rtol=1e-12, atol=0)
        torch.testing.assert_close(ddim.ddim_sigma(abar_t, abar_prev, 0.3), 0.3 * sigma)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("t, t_prev", [(999, 959), (500, 100), (60, 59), (40, 0)])
def test_q_sigma_keeps_the_marginal(eta, t, t_prev):
    """x_t ~ q(x_t | x_0), one step of Eq. 12 with the true x_0 (that is Eq. 7's q_sigma) gives
    x_prev ~ N(sqrt(abar_prev) x_0, (1 - abar_prev) I) (DDIM Lemma 1) for any eta and skip, and
    Cov(x_prev, x_t) = sqrt(1 - abar_prev - sigma^2) sqrt(1 - abar_t) (Eq. 7's mean).
    n = 400k draws; SE(sample covariance) = sqrt((var_prev var_t + cov^2) / n)."""
    n, x0 = 400_000, 0.7
    gen = torch.Generator().manual_seed(t)
    abar = ddim.make_schedule("linear", 1000)["alphas_cumprod"]
    abar_t, abar_prev = abar[t], abar[t_prev]
    x_t = abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * torch.randn(n, generator=gen)
    x_prev, _ = ddim.ddim_step(x_t, torch.full((n,), x0), abar_t, abar_prev, eta, "x0", False,
                               torch.randn(n, generator=gen))
    var_prev = 1 - abar_prev.item()
    assert_moments(x_prev, math.sqrt(abar_prev.item()) * x0, var_prev)
    sigma = ddim.ddim_sigma(abar_t.double(), abar_prev.double(), eta).item()
    cov = math.sqrt(max(var_prev - sigma ** 2, 0)) * math.sqrt(1 - abar_t.item())
    a, b = x_prev.double(), x_t.double()
    sample_cov = ((a - a.mean()) * (b - b.mean())).mean()
    assert abs(sample_cov - cov) < Z * math.sqrt((var_prev * (1 - abar_t.item()) + cov ** 2) / n)
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


# --------------------------------------------------------------------------------------------------
# A tiny checkpoint written by ddpm.py --train, shared by the tests below.


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """ddpm.py --train for 2 steps of a 16 px, T = 50 network (~3 s). The final 64-image grid that
    train() writes is skipped: it would triple the time and is not what is tested here."""
    tmp = tmp_path_factory.mktemp("ddpm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ddpm, "write_training_grid", lambda *args: None)
        ddpm.main(["--train", "--steps", "2", "--ch", "16", "--ch-mult", "1,2", "--attn-levels",
                   "1", "--batch", "4", "--n-images", "16", "--image-size", "16", "--T", "50",
                   "--sample-every", "0", "--log-every", "1", "--ckpt", str(tmp / "ddpm.pt"),
                   "--out", str(tmp)])
    return tmp / "ddpm.pt"


def test_checkpoint_loads_and_samples(ckpt, tmp_path, capsys):
    ddim.main(["--ckpt", str(ckpt), "--steps", "4", "--n", "3", "--out", str(tmp_path)])
    name = "ddim_ddpm_step2_uniform4_eta0_seed0"
    assert Image.open(tmp_path / f"{name}.png").size == (8 * 18 + 2, 18 + 2)
    assert Image.open(tmp_path / f"{name}.gif").n_frames >= 4  # Pillow merges the held frames
    # more than 64 images: a folder of single PNGs, the last batch padded to a full one
    ddim.main(["--ckpt", str(ckpt), "--steps", "1", "--n", "65", "--batch", "40", "--out",
               str(tmp_path)])
    assert len(list((tmp_path / "ddim_ddpm_step2_uniform1_eta0_seed0_n65").glob("*.png"))) == 65
    # a v-prediction, cosine-schedule checkpoint samples too
    state = torch.load(ckpt, weights_only=True)
    state["config"].update(prediction="v", schedule="cosine")
    torch.save(state, tmp_path / "v.pt")
    ddim.main(["--ckpt", str(tmp_path / "v.pt"), "--steps", "3", "--n", "2", "--out",
               str(tmp_path)])
    assert "predicts v" in capsys.readouterr().out


def test_batch_does_not_change_the_images(ckpt):
    """Image k's starting and step noise come from a generator keyed on (seed, k)."""
    model, c, _ = ddim.load_checkpoint(str(ckpt))
    abar = ddim.make_schedule(c["schedule"], c["T"])["alphas_cumprod"]
    cfg = ddim.Config(steps=5, eta=0.5, seed=7)
    whole = ddim.sample_images(model, abar, c, cfg, 0, 5)
    parts = torch.cat([ddim.sample_images(model, abar, c, cfg, i, 2) for i in (0, 2, 4)])
    torch.testing.assert_close(parts[:5], whole, atol=1e-5, rtol=0)
    other_seed = ddim.sample_images(model, abar, c, replace(cfg, seed=8), 0, 5)
    assert (other_seed - whole).abs().mean() > 0.1


def test_compare_invert_interp_bench(ckpt, tmp_path, capsys):
    out = ["--ckpt", str(ckpt), "--out", str(tmp_path)]
    ddim.main(out + ["--compare", "1,3,10", "--n", "4"])  # 3 rows of 4 images of 16 px
    grid = Image.open(tmp_path / "ddim_ddpm_step2_compare1-3-10_uniform_eta0_seed0.png")
    assert grid.height == 3 * 18 + 2 and grid.width > 4 * 18 + 2  # and a margin for the labels
    ddim.main(out + ["--interp", "--frames", "3", "--steps", "3"])
    assert Image.open(tmp_path / "ddim_ddpm_step2_interp_uniform3_seed0.png").width == 3 * 18 + 2
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        Image.fromarray(np.full((20, 20, 3), 60 * k, np.uint8)).save(images / f"{k}.png")
    for path in (images, images / "1.png"):
        ddim.main(out + ["--invert", str(path), "--steps", "10"])
        assert "reconstruction PSNR" in capsys.readouterr().out
    assert Image.open(tmp_path / "ddim_ddpm_step2_invert_images_uniform10.png").size == (146, 20)
    ddim.main(out + ["--bench", "--steps", "3"])
    printed = capsys.readouterr().out
    assert "eager fp32" in printed and "the network alone" in printed
    assert printed.count("img/s") >= 3


@pytest.mark.parametrize("argv, says", [
    (["--steps", "0"], "--steps 0"),
    (["--steps", "51"], "T = 50"),
    (["--compare", "5,51"], "--compare 5,51"),
    (["--compare", "a,b"], "--compare"),
    (["--eta", "-0.5"], "--eta -0.5"),
    (["--spacing", "leading"], "--spacing leading"),
    (["--invert", "no/such.png"], "no such image"),
    (["--ckpt", "vae.pt"], "a vae checkpoint"),
    (["--ckpt", "junk.pt"], "not a readable checkpoint"),
    (["--ckpt", "missing.pt"], "no checkpoint at"),
])
def test_bad_input_is_one_line(argv, says, ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"kind": "vae", "config": {}, "model": {}}, "vae.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    if "--ckpt" not in argv:
        argv = ["--ckpt", str(ckpt)] + argv
    with pytest.raises(SystemExit) as e:
        ddim.main(argv + ["--out", str(tmp_path)])
    message = str(e.value.code)
    assert message.startswith("ddim.py: ") and "\n" not in message and says in message, message


def test_an_unwritable_out_stops_before_sampling(ckpt, tmp_path):
    (tmp_path / "file").write_text("")  # a file where the folder should be
    with pytest.raises(SystemExit) as e:
        ddim.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "file" / "out"), "--steps", "2"])
    assert "(Not a directory) -- pass a writable --out" in str(e.value.code)
