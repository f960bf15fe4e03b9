"""Tests of vae.py: its likelihood math against closed forms, and its command line (CPU, seeded).

The statistical tests use a linear-Gaussian VAE, x = W z + b + noise with z ~ N(0, I) and noise
~ N(0, s^2 I), whose marginal N(b, W W^T + s^2 I) and posterior are exact. W has orthogonal columns,
so the posterior N(mu*, Sigma*) is diagonal, with Sigma* = (I + W^T W / s^2)^-1 and
mu* = Sigma* W^T (x - b) / s^2, and lies in the family of q(z|x). Tolerances are 5 standard errors
of the Monte Carlo mean: a false failure has probability below 1e-6 per comparison.
"""
import inspect
import math
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
import vae


@pytest.fixture(autouse=True)
def float64_default():
    """The closed forms are checked in float64, to round-off."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


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


def test_load_folder_is_ddpms():
    assert inspect.getsource(vae.load_folder) == inspect.getsource(ddpm.load_folder)
    assert vae.IMAGE_EXTS == ddpm.IMAGE_EXTS


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
# Command line, on tiny networks and images

TINY = ["--image-size", "16", "--ch", "8", "--ch-mult", "1,2", "--z-dim", "8", "--n-images", "64",
        "--n-eval", "12", "--batch", "8", "--log-every", "2", "--iwae-k", "8",
        "--sample-batch", "32", "--sample-every", "0"]


def run(*argv):
    """vae.main, with float32 as the command line has it."""
    torch.set_default_dtype(torch.float32)
    return vae.main(list(argv))


def fails(capsys, *argv):
    """The one-line message that vae.main stops with."""
    with pytest.raises(SystemExit) as e:
        run(*argv)
    message = str(e.value.code)
    assert message.startswith("vae.py: ") and "\n" not in message.strip(), message
    return message


def test_train_sample_recon_interp_eval_resume_bench(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run("--train", *TINY, "--steps", "4", "--ckpt-every", "2")
    ckpt = torch.load("vae.pt", weights_only=True)
    assert ckpt["kind"] == "vae" and ckpt["step"] == 4 and ckpt["config"]["z_dim"] == 8
    run("--sample", "--n", "70")
    assert len(list((tmp_path / "out" / "vae_step4_sample_seed0_n70").iterdir())) == 70
    run("--recon")
    run("--interp")
    for mode in ("sample", "recon", "interp"):
        assert Image.open(tmp_path / "out" / f"vae_step4_{mode}_seed0.png").size[0] > 16
    capsys.readouterr()
    run("--eval")
    out = capsys.readouterr().out
    assert "12 held-out images" in out and "-IWAE (K=8)" in out and "bits/dim" in out
    run("--train", "--resume", "--steps", "6")
    assert torch.load("vae.pt", weights_only=True)["step"] == 6
    run("--bench", *TINY)
    assert "MFU" in capsys.readouterr().out


def test_minutes_start_the_lr_schedule_after_the_compile(tmp_path, monkeypatch, step_clock):
    """--minutes: a first step that takes half the budget (as compiling does on a GPU) leaves the
    cosine untouched, so the second step runs at the peak LR; the LR still ends near 0."""
    monkeypatch.chdir(tmp_path)
    step_clock(vae, first=0.6, rest=0.07)  # half of the 1.2 s budget
    lrs, rate = [], vae.learning_rate
    monkeypatch.setattr(vae, "learning_rate", lambda *a: lrs.append(rate(*a)) or lrs[-1])
    run("--train", *TINY, "--minutes", "0.02", "--warmup", "1", "--lr", "1e-3")
    assert len(lrs) == 10  # 0.6 s + 9 x 0.07 s = 1.23 s
    assert lrs[1] > 0.99e-3  # progress ~0: cosine(0) = 1 (it was 0.5 with compile time counted)
    assert lrs[-1] < 0.02e-3  # progress 0.56 / 0.6 at the last step: cosine 0.011
    assert torch.load("vae.pt", weights_only=True)["step"] == len(lrs)


def test_data_folder_with_held_out_split(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(f"imgs/{i}.png")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    run("--train", *TINY, "--data", "imgs", "--holdout", "0.2", "--steps", "2")
    run("--eval")
    out = capsys.readouterr().out
    assert "8 training images" in out and "2 held-out images" in out and "1 unreadable" in out


def test_nan_stops_without_saving_and_ctrl_c_saves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run("--train", *TINY, "--steps", "2")
    saved = (tmp_path / "vae.pt").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(vae, "log_px_given_z", lambda *a: torch.tensor(float("nan")))
        with pytest.raises(SystemExit, match="the loss became nan near step 4"):
            run("--train", "--resume", "--steps", "6")
    assert (tmp_path / "vae.pt").read_bytes() == saved  # the last good state is kept

    def interrupt(cfg, step, progress):  # Ctrl-C while step 4 (index 3) is being taken
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return cfg.lr
    monkeypatch.setattr(vae, "learning_rate", interrupt)
    with pytest.raises(SystemExit) as e:
        run("--train", "--resume", "--steps", "6")
    assert e.value.code == 130 and torch.load("vae.pt", weights_only=True)["step"] == 4


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ddpm.save_checkpoint("ddpm.pt", config={}, step=0)
    message = fails(capsys, "--sample", "--ckpt", "ddpm.pt")
    assert "ddpm.pt is a ddpm checkpoint, not a vae.py one -- " in message
    assert "no checkpoint at vae.pt" in fails(capsys, "--eval")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "junk.pt is not a readable checkpoint" in fails(capsys, "--recon", "--ckpt", "junk.pt")
    assert "--resume goes with --train" in fails(capsys, "--sample", "--resume")
    assert "must be a multiple of 4" in fails(capsys, "--train", *TINY, "--image-size", "30")
    assert "invalid int_tuple value" in fails(capsys, "--train", "--ch-mult", "a,b")
    assert "--data nowhere: no such folder" in fails(capsys, "--train", *TINY, "--data", "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no training images" in fails(capsys, "--train", *TINY, "--data", "empty")
    (tmp_path / "file").write_text("")  # a file where a folder should be: found before training
    assert "writable --out and --ckpt" in fails(capsys, "--train", *TINY, "--out", "file/o")
    assert "one of the arguments" in fails(capsys)
    (tmp_path / "vae.pt").write_bytes(b"precious")
    assert "vae.pt exists -- add --resume" in fails(capsys, "--train", *TINY)
    assert (tmp_path / "vae.pt").read_bytes() == b"precious"  # nothing lost
