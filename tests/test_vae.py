"""Tests of vae.py: its likelihood math against closed forms, and its command line (CPU, seeded).

The statistical tests use a linear-Gaussian VAE, x = W z + b + noise with z ~ N(0, I) and noise
~ N(0, s^2 I), whose marginal N(b, W W^T + s^2 I) and posterior are exact. W has orthogonal columns,
so the posterior N(mu*, Sigma*) is diagonal, with Sigma* = (I + W^T W / s^2)^-1 and
mu* = Sigma* W^T (x - b) / s^2, and lies in the family of q(z|x). Tolerances are 5 standard errors
of the Monte Carlo mean: a false failure has probability below 1e-6 per comparison.
"""
import math
import os
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import vae

@pytest.fixture(autouse=True)
def float64_one_thread(monkeypatch):
    """The closed forms are checked in float64, to round-off; one thread, as tiny networks on a
    busy 2-core machine run ten times slower with two. Ctrl-C's handler is put back after a test
    that stopped training with an error (a process would end there). --eval and the pictures
    use 12 held-out faces, K = 8, and decode 32 images at once."""
    for name, value in dict(N_EVAL=12, IWAE_K=8, DECODE_BATCH=32).items():
        monkeypatch.setattr(vae, name, value)
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    handler = signal.getsignal(signal.SIGINT)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, handler)

def linear_gaussian(Z=3, D=6, s=0.7, seed=0):
    """W [D, Z] with orthogonal columns, b, log s, one x, log p(x), and the exact posterior."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, Z, generator=g))
    W = Q * torch.tensor([2.0, 1.0, 0.5][:Z])  # column norms 2, 1, 0.5: W^T W diagonal
    b, x = torch.randn(D, generator=g), 2 * torch.randn(1, D, generator=g)
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + s ** 2 * torch.eye(D))
    var_post = 1 / (1 + (W ** 2).sum(0) / s ** 2)  # diagonal of (I + W^T W / s^2)^-1
    mu_post = var_post * ((x - b) @ W) / s ** 2  # [1, Z]
    log_px = lambda z: vae.log_normal(x, z @ W.T + b, math.log(s))  # noqa: E731
    return log_px, marginal.log_prob(x), mu_post, var_post.log().expand(1, Z)

def mean_se(v):
    return v.mean().item(), v.std().item() / math.sqrt(len(v))

def test_gaussian_kl_matches_monte_carlo():
    """KL(q || N(0, I)) closed form vs the mean of log q(z) - log p(z) over N = 200,000 z ~ q."""
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0, 0.0]]), torch.tensor([[0.0, -1.0, 1.0, -3.0]])
    eps = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0))
    z = vae.reparameterize(mu, logvar, eps)
    m, se = mean_se(vae.log_normal(z, mu, logvar / 2) - vae.log_normal(z, 0, 0))
    kl = vae.gaussian_kl(mu, logvar).item()  # 1/2 sum(exp(logvar) + mu^2 - 1 - logvar)
    assert abs(kl - 4.192975) < 1e-6
    assert abs(m - kl) < 5 * se, (m, se, kl)

def test_bits_per_dim_of_uniform_pixels_is_8():
    """The uniform density on [0, 256)^D is 1/2 per dim in the units of s: exactly 8 bits/dim."""
    D = 12288
    assert vae.bits_per_dim(D * math.log(2), D) == pytest.approx(8.0, abs=1e-12)

def test_dequantize_stays_in_the_pixel_bin():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(1, 16, 16, 3)
    s = vae.dequantize(x, torch.Generator().manual_seed(0))
    assert s.shape == (1, 3, 16, 16) and s.min() >= -1 and s.max() < 1
    assert (vae.to_uint8(s) == x.numpy()).all()

def test_elbo_equals_log_px_at_the_exact_posterior():
    """q = p(z|x): log p(x, z) - log q(z|x) = log p(x) for every z, so the estimator of VAE Eq. 6
    (iwae_bound at K = 1) has zero variance: equal to round-off. The estimator of Eq. 7 and 10
    (analytic KL, recon at one z) does vary; its mean over N = 1,000 draws is log p(x)."""
    log_px, exact, mu, logvar = linear_gaussian()
    eps = torch.randn(1000, 1, 3, generator=torch.Generator().manual_seed(1))
    one_sample = torch.stack([vae.iwae_bound(log_px, mu, logvar, e[None]) for e in eps[:20]])
    assert (one_sample - exact).abs().max() < 1e-10
    recon, kl = vae.elbo(log_px, mu, logvar, eps)  # 1000 draws of recon - kl, each [1]
    m, se = mean_se((recon - kl).flatten())
    assert abs(m - exact.item()) < 5 * se, (m, se, exact)

def test_elbo_falls_short_of_log_px_by_the_kl_to_the_posterior():
    """log p(x) - ELBO(q) = KL(q || p(z|x)) > 0, with the KL between diagonal Gaussians in closed
    form: 1/2 sum(v_q / v* + (mu* - mu_q)^2 / v* - 1 + log v* - log v_q); N = 20,000 draws."""
    log_px, exact, mu_post, logvar_post = linear_gaussian()
    mu = mu_post + torch.tensor([0.3, -0.5, 0.2])
    logvar = logvar_post + torch.tensor([0.5, -1.0, 0.0])
    v_post, v = logvar_post.exp(), logvar.exp()
    gap = 0.5 * (v / v_post + (mu_post - mu) ** 2 / v_post - 1 + logvar_post - logvar).sum()
    eps = torch.randn(20_000, 1, 3, generator=torch.Generator().manual_seed(2))
    recon, kl = vae.elbo(log_px, mu, logvar, eps)
    m, se = mean_se((recon - kl).flatten())
    assert gap > 20 * se  # the bound is strict, far beyond the noise
    assert abs(m - (exact.item() - gap.item())) < 5 * se, (m, se, exact, gap)

def test_iwae_rises_with_k_towards_log_px():
    """E IWAE_K < E IWAE_5K <= log p(x) (IWAE Theorem 1) for a q off and wider than the posterior.
    Each K: S = 4,000 independent bounds. Consecutive means must differ by more than 5 joint
    standard errors (they differ by over 20), the K = 125 mean must not exceed log p(x) by 5
    standard errors, and it must close 90% of the K = 1 gap (it closes 96%)."""
    log_px, exact, mu_post, logvar_post = linear_gaussian()
    mu, logvar = mu_post + 0.8, logvar_post + 0.5
    S, gen, means = 4000, torch.Generator().manual_seed(3), []
    for K in (1, 5, 25, 125):
        eps = torch.randn(K, S, 3, generator=gen)
        means.append(mean_se(vae.iwae_bound(log_px, mu.expand(S, 3), logvar.expand(S, 3), eps)))
    for (m1, se1), (m2, se2) in zip(means, means[1:]):
        assert m2 - m1 > 5 * math.hypot(se1, se2), means
    m, se = means[-1]
    assert m < exact.item() + 5 * se, (means, exact)
    assert exact.item() - m < 0.1 * (exact.item() - means[0][0]), (means, exact)

def test_reparameterised_gradient_matches_score_function():
    """d/d(mu, logvar) E_q log p(x|z) two ways, for a nonlinear decoder tanh(W z + b), N = 400,000:
    pathwise, grad log p(x | mu + exp(logvar / 2) eps) through vae.elbo (VAE Sec. 2.4), and the
    score function (f(z) - f(mu)) grad log q(z), z drawn here (the baseline f(mu) adds no bias)."""
    g = torch.Generator().manual_seed(4)
    W, b, x = (torch.randn(*shape, generator=g) for shape in [(3, 2), (3,), (3,)])
    f = lambda z: vae.log_normal(x, torch.tanh(z @ W.T + b), math.log(0.5))  # noqa: E731
    mu0, logvar0, N = torch.tensor([0.3, -0.2]), torch.tensor([-0.4, 0.6]), 400_000
    mu, logvar = mu0.repeat(N, 1).requires_grad_(), logvar0.repeat(N, 1).requires_grad_()
    recon, _ = vae.elbo(f, mu, logvar, torch.randn(N, 2, generator=g))
    recon.sum().backward()  # per-sample gradients: row i depends on sample i only
    pathwise = torch.cat([mu.grad, logvar.grad], 1)
    mu, logvar = mu0.repeat(N, 1).requires_grad_(), logvar0.repeat(N, 1).requires_grad_()
    z = mu0 + torch.exp(logvar0 / 2) * torch.randn(N, 2, generator=g)
    vae.log_normal(z, mu, logvar / 2).sum().backward()
    score = (f(z) - f(mu0))[:, None] * torch.cat([mu.grad, logvar.grad], 1)
    diff = pathwise.mean(0) - score.mean(0)
    se = (pathwise.var(0) / N + score.var(0) / N).sqrt()
    assert (diff.abs() < 5 * se).all(), (pathwise.mean(0), score.mean(0), se)
    assert (pathwise.mean(0).abs() > 10 * se).any()  # the gradient is not trivially zero

# --------------------------------------------------------------------------------------------------
# The formulas reached through the network and the commands, on tiny networks and images

TINY = dict(image_size=16, ch=8, z_dim=8, n_images=64, batch=8)
FLAGS = [w for k, v in TINY.items() for w in (f"--{k.replace('_', '-')}", str(v))]

def test_log_px_given_z_has_one_sigma_per_colour_channel():
    """log p(s|z) = sum over pixels of log N(s; mean(z), sigma_c), sigma_c of the pixel's channel,
    against torch.distributions.Normal; z [K, B, Z] decodes each z."""
    model = vae.VAE(vae.Config(**TINY))
    model.log_sigma.data = torch.tensor([-1.0, 0.0, 0.5])
    g = torch.Generator().manual_seed(5)
    x, z = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.randn(4, 2, 8, generator=g)
    sigma = model.log_sigma.exp().view(1, 3, 1, 1)
    want = torch.stack([torch.distributions.Normal(model.decode(zk), sigma).log_prob(x)
                        .sum((1, 2, 3)) for zk in z])
    assert torch.allclose(vae.log_px_given_z(model, x, z), want, rtol=1e-5)

def test_learning_rate_warms_up_then_follows_a_cosine_to_0(monkeypatch):
    """lr(step) = lr min(1, (step + 1) / WARMUP) (1 + cos(pi step / steps)) / 2."""
    monkeypatch.setattr(vae, "WARMUP", 10)
    cfg = vae.Config(lr=1e-3, steps=100)
    lr = [vae.learning_rate(cfg, step) for step in range(100)]
    cosine = [0.5 * (1 + math.cos(math.pi * step / 100)) for step in range(100)]
    assert lr[:10] == pytest.approx([1e-3 * (k + 1) / 10 * cosine[k] for k in range(10)])
    assert lr[50] == pytest.approx(0.5e-3) and lr[99] == pytest.approx(1e-3 * cosine[99])

@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_evaluate_of_a_vae_whose_decoder_ignores_z(mu):
    """Decoder output zeroed: every z gives p(x|z) = N(s; 0, sigma^2 I), and with sigma = e^8 the
    s^2 term is below 1e-4 nats, so log p(x) = -D (log sigma + log(2 pi) / 2 + log 128) in nats of
    y. Encoder output zeroed, then its bias set: q(z|x) = N(mu 1, I), KL = Z mu^2 / 2 (VAE App. B),
    -ELBO = -log p(x) + KL; at mu = 0, q = p(z), so every importance weight is p(x): IWAE = ELBO."""
    cfg = vae.Config(**TINY)
    model = vae.VAE(cfg)
    for layer in model.encoder[-1], model.decoder[-1]:
        layer.weight.data.zero_()
        layer.bias.data.zero_()
    model.encoder[-1].bias.data[:cfg.z_dim] = mu
    model.log_sigma.data.fill_(8.0)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    table = vae.evaluate(model, images, cfg, torch.device("cpu"), "test")
    D, kl, rows = 3 * 16 * 16, cfg.z_dim * mu ** 2 / 2, list(table.values())
    want = D * (8 + math.log(2 * math.pi) / 2 + math.log(128))  # -log p(x)
    assert torch.allclose(rows[0], torch.full((5,), want + kl, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(rows[2], torch.full((5,), kl, dtype=torch.float64), atol=1e-6)
    if mu == 0:
        assert (rows[3] - rows[0]).abs().max() < 1e-6

class NegativeOfPixels:
    """An encoder that is the identity on s, mu(x) = s, and a decoder mean(z) = -z: the negative
    of the image, 255 - x, once quantised, as 256 - y is in that bin."""

    def encode(self, s):
        return s.flatten(1), torch.zeros_like(s.flatten(1))

    def decode(self, z):
        return -z.reshape(-1, 3, 16, 16)

def test_write_grid_places_each_image_in_its_cell(tmp_path):
    """5 flat images in rows of 3: image k's top-left pixel at (2 + 18 r, 2 + 18 c), r, c =
    divmod(k, 3); 2 px white gaps between and around; the sixth cell blank."""
    images = np.arange(5, dtype=np.uint8)[:, None, None, None].repeat(16, 1).repeat(16, 2)
    vae.write_grid(images.repeat(3, 3), tmp_path / "grid.png", cols=3)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * 18 + 2, 3 * 18 + 2, 3)
    want = np.full(grid.shape[:2], 255)
    for k in range(5):
        r, c = divmod(k, 3)
        want[2 + 18 * r:18 * (r + 1), 2 + 18 * c:18 * (c + 1)] = k
    assert (grid == want[..., None]).all()

def test_recon_and_interp_grids():
    """--recon: rows of 8 inputs above their reconstructions. --interp: rows of a, mean(z) at
    z = (1 - t) mu(a) + t mu(b) for t = 0, 1/9, ..., 1, then b: at t = 1/3, within one level of
    255 - (2 a + b) / 3 here."""
    import cartoons
    cfg, x = vae.Config(**TINY), cartoons.make(32, 16, seed=1).astype(float)  # held-out faces
    images, cols = vae.pictures("recon", NegativeOfPixels(), cfg, torch.device("cpu"))
    rows = images.reshape(4, 2, 8, 16, 16, 3)  # 4 rows of 8 inputs, each above its outputs
    assert cols == 8 and (rows[:, 0] == x.reshape(4, 8, 16, 16, 3)).all()
    assert (rows[:, 1] == 255 - x.reshape(4, 8, 16, 16, 3)).all()
    x = cartoons.make(16, 16, seed=1).astype(float)
    images, cols = vae.pictures("interp", NegativeOfPixels(), cfg, torch.device("cpu"))
    rows = images.reshape(8, 12, 16, 16, 3)
    assert cols == 12 and (rows[:, 0] == x[0::2]).all() and (rows[:, -1] == x[1::2]).all()
    assert (rows[:, 1] == 255 - x[0::2]).all() and (rows[:, 10] == 255 - x[1::2]).all()
    assert np.abs(rows[:, 4] - (255 - (2 * x[0::2] + x[1::2]) / 3)).max() <= 1

def test_training_lowers_the_held_out_elbo(tmp_path, monkeypatch):
    """20 steps at lr 1e-2 from the same initial weights: the held-out -ELBO (12 faces) falls by
    more than 10 joint standard errors (from 53.6 to 11.8 bits/dim); a flipped sign in the
    loss or the update makes it rise."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vae, "WARMUP", 1)  # lr 1e-2 from the first step
    run("--train", *FLAGS, "--steps", "20", "--lr", "1e-2")
    cfg = vae.Config(**TINY)
    torch.manual_seed(0)  # as train() does, so that the network starts from the same weights
    untrained, images = vae.VAE(cfg).float(), vae.load_data(cfg, heldout=vae.N_EVAL)
    before = mean_se(vae.evaluate(untrained, images, cfg, torch.device("cpu"), "untrained")
                     ["-ELBO = recon + KL"])
    after = mean_se(run("--eval")["-ELBO = recon + KL"])
    assert before[0] - after[0] > 10 * math.hypot(before[1], after[1]), (before, after)

# --------------------------------------------------------------------------------------------------
# Command line

def run(*argv):
    """vae.main, with float32 as the command line has it."""
    torch.set_default_dtype(torch.float32)
    return vae.main(list(argv))

def fails(*argv):
    """The one-line message that vae.main stops with."""
    with pytest.raises(SystemExit) as e:
        run(*argv)
    message = str(e.value.code)
    assert message.startswith("vae.py: ") and "\n" not in message.strip(), message
    return message

def test_train_sample_recon_interp_eval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vae, "CKPT_EVERY", 2)
    run("--train", *FLAGS, "--steps", "4")
    ckpt = torch.load("vae.pt", weights_only=True)
    assert ckpt["kind"] == "vae" and ckpt["step"] == 4 and ckpt["config"]["z_dim"] == 8
    assert sorted(os.listdir("out")) == ["vae_train_step0000002.png", "vae_train_step0000004.png"]
    run("--sample", "--n", "70")
    assert len(os.listdir("out/vae_step4_sample_seed0_n70")) == 70
    run("--recon")
    run("--interp")
    sizes = {"sample": (146, 146), "recon": (146, 146), "interp": (218, 146)}  # 18 px a picture
    assert all(Image.open(f"out/vae_step4_{m}_seed0.png").size == sizes[m] for m in sizes)
    table = run("--eval", "--seed", "1")
    assert all(len(v) == 12 and v.isfinite().all() for v in table.values())

def test_data_folder_with_held_out_split(tmp_path, monkeypatch):
    """--data: 3 of 10 images held out (ceil(0.25 * 10)), drawn at random but the same for every
    --seed; at the default HOLDOUT 0.05, 2 (ceil(0.5) = 1 is raised to the 2 that --interp needs);
    the unreadable file is counted and skipped."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vae, "HOLDOUT", 0.25)
    (tmp_path / "imgs").mkdir()
    for i in range(10):  # image i is flat grey 20 i
        Image.new("RGB", (20, 24), (20 * i,) * 3).save(f"imgs/{i}.png")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    run("--train", *FLAGS, "--data", "imgs", "--steps", "2")
    assert len(run("--eval")["-ELBO = recon + KL"]) == 3
    cfg = vae.Config(**TINY, data="imgs")
    held_out = [sorted(vae.load_data(replace(cfg, seed=seed), heldout=12)[:, 0, 0, 0] // 20)
                for seed in (0, 5)]
    training = vae.load_data(cfg)[:, 0, 0, 0] // 20
    assert held_out[0] == held_out[1] != [0, 1, 2]
    assert sorted([*held_out[0], *training]) == list(range(10))
    assert vae.load_folder("imgs", 16)[1] == 1
    monkeypatch.setattr(vae, "HOLDOUT", 0.05)
    assert len(vae.load_data(cfg, heldout=12)) == 2 and len(vae.load_data(cfg)) == 8

def test_load_folder_agrees_with_ddpms(tmp_path):
    """16-bit grey keeps the top 8 bits, transparency (RGBA, LA, P) is composited onto white,
    the centre square is kept, and unreadable files are counted: as ddpm.load_folder does."""
    flat = lambda mode, size, value: Image.new(mode, size, value)  # noqa: E731
    flat("I;16", (12, 12), 40000).save(tmp_path / "a_grey16.png")  # -> 40000 / 257 = 155.6
    flat("RGBA", (12, 12), (10, 20, 30, 0)).save(tmp_path / "b_clear.png")  # -> white
    flat("LA", (12, 12), (0, 0)).save(tmp_path / "c_clear_grey.png")  # -> white
    palette = flat("P", (12, 12), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50])
    palette.save(tmp_path / "d_palette.png")  # -> (200, 100, 50)
    palette.save(tmp_path / "e_palette_clear.png", transparency=1)  # -> white
    wide = np.zeros((8, 24, 3), np.uint8)
    wide[:, 8:16] = 77  # the centre 8x8 square is kept (up to the reach of the filter)
    Image.fromarray(wide).save(tmp_path / "f_wide.png")
    (tmp_path / "g_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    images, skipped = vae.load_folder(str(tmp_path), 4)
    assert skipped == 1 and images.shape == (6, 4, 4, 3) and images.dtype == np.uint8
    want = [155, 255, 255, (200, 100, 50), 255]
    assert all((im == np.array(w, np.uint8)).all() for im, w in zip(images, want))
    assert np.abs(images[5].astype(int) - 77).max() < 8  # squashed whole, it would have 0s
    import ddpm  # here, so that the rest of this file runs while ddpm.py is being edited
    theirs, their_skipped, _ = ddpm.load_folder(str(tmp_path), 4)
    assert (images == np.stack(theirs)).all() and skipped == their_skipped

def test_nan_stops_without_saving_and_ctrl_c_saves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:  # NaN from step 3 on: the checkpoint of step 2 stays
        nan_from = lambda cfg, step: float("nan") if step >= 2 else cfg.lr  # noqa: E731
        m.setattr(vae, "learning_rate", nan_from)
        m.setattr(vae, "CKPT_EVERY", 2)
        message = fails("--train", *FLAGS, "--steps", "6")
    assert "became nan near step 4" in message and "vae.pt keeps the last good state" in message
    assert torch.load("vae.pt", weights_only=True)["step"] == 2
    os.remove("vae.pt")
    clip, calls = torch.nn.utils.clip_grad_norm_, []

    def nan_gradient(parameters, max_norm):  # step 2's gradient is NaN, its loss finite
        parameters, _ = list(parameters), calls.append(1)
        for p in parameters if len(calls) == 2 else []:
            p.grad.fill_(float("nan"))
        return clip(parameters, max_norm)
    with monkeypatch.context() as m:  # the NaN weights of step 2 are not saved
        m.setattr(torch.nn.utils, "clip_grad_norm_", nan_gradient)
        m.setattr(vae, "CKPT_EVERY", 2)
        assert "became nan near step 2" in fails("--train", *FLAGS, "--steps", "6")
    assert not os.path.exists("vae.pt")

    def interrupt(cfg, step):  # Ctrl-C while step 4 (index 3) is being taken
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return cfg.lr
    monkeypatch.setattr(vae, "learning_rate", interrupt)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as e:
        run("--train", *FLAGS, "--steps", "100")
    assert e.value.code == 130 and torch.load("vae.pt", weights_only=True)["step"] == 4
    assert signal.getsignal(signal.SIGINT) is handler  # given back

def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError: one line, no .tmp left, the old file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vae.pt").write_bytes(b"the last checkpoint")

    def disk_full(*args):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit) as e:
        vae.save_checkpoint("vae.pt", {})
    assert str(e.value.code).startswith("vae.py: cannot write vae.pt (PytorchStreamWriter failed")
    assert os.listdir(tmp_path) == ["vae.pt"]
    assert (tmp_path / "vae.pt").read_bytes() == b"the last checkpoint"

def test_bad_input_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vae, "load_data", lambda *a: pytest.fail("work began"))
    for flag, value, why in [("beta", "nan", "0 or more"), ("lr", "inf", "positive"),
                             ("seed", "99999999999999999999", "below 2^31")]:
        assert fails("--train", f"--{flag}", value).endswith(f"--{flag} {value}: must be a finite "
                                                             f"number, {why}")
    assert fails("--train", "--lr", "0").endswith("--lr 0.0: must be a finite number, positive")
    assert fails("--train", "--beta", "-1").endswith("--beta -1.0: must be a finite number, 0 or "
                                                     "more")
    assert "must be a finite number, a multiple of 16" in fails("--train", "--image-size", "30")
    assert "invalid int value: 'a'" in fails("--train", "--ch", "a")
    assert "one of the arguments" in fails()
    (tmp_path / "file").write_text("")  # a file where a folder should be
    assert "cannot write" in fails("--train", *FLAGS, "--out", "file/o")
    assert "cannot write" in fails("--train", *FLAGS, "--ckpt", "file/vae.pt")
    torch.save(dict(kind="ddpm", config={}, step=0), "ddpm.pt")
    assert "ddpm.pt is not a vae.py checkpoint that fits these flags (TypeError) -- " in fails(
        "--sample", "--ckpt", "ddpm.pt")
    assert "vae.pt is not a vae.py checkpoint that fits these flags (FileNotFoundError)" in fails(
        "--eval")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "junk.pt is not a vae.py checkpoint" in fails("--recon", "--ckpt", "junk.pt")
    (tmp_path / "vae.pt").write_bytes(b"precious")
    assert "vae.pt exists -- " in fails("--train", *FLAGS)
    assert (tmp_path / "vae.pt").read_bytes() == b"precious"  # nothing lost

def test_bad_data_and_network_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--data nowhere: no training images (0 unreadable)" in fails("--train", *FLAGS,
                                                                         "--data", "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no training images" in fails("--train", *FLAGS, "--data", "empty")
    assert not os.path.exists("vae.pt")
    run("--train", *FLAGS, "--steps", "1")
    assert "vae.pt is not a vae.py checkpoint that fits these flags (RuntimeError) -- " in fails(
        "--sample", "--ch", "16")
