"""Classifier-free guidance in ddim.py (Ho & Salimans 2022, arXiv 2207.12598v1): the guided
sampler against its two ends, labels drawn with the data's class frequencies, and the command
line on a tiny conditional checkpoint written by ddpm.py's own save_checkpoint (CPU, seeded).

No oracle is needed for the sampler: Eq. 6, out~ = (1 + w) out(x, c) - w out(x, none), is the
conditional network itself at w = 0 and the unconditional one at w = -1, so ddim.py's sampler
run guided must reproduce it run on either network alone, to float32 rounding (the guided call
runs both halves in one batch of 2B, whose convolutions may sum in another order).
"""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
import ddpm
from unet import UNet

CLASSES = {"red": 50, "blue": 30, "bald": 20}  # {name: training images}, in label order
ARCH = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,))


def tiny_net(num_classes):
    """A random 16-channel U-Net whose zero-initialised layers are randomised too: a new network
    predicts 0 whatever its inputs, labels included."""
    torch.manual_seed(0)
    net = UNet(**ARCH, num_classes=num_classes).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net


class Counting(torch.nn.Module):
    """net, recording the batch size of each call; num_classes is what unet.guided reads."""

    def __init__(self, net):
        super().__init__()
        self.net, self.num_classes, self.batches = net, net.num_classes, []

    def forward(self, x, t, c=None):
        self.batches.append(len(x))
        return self.net(x, t, c)


def test_w0_is_the_conditional_network_and_w_minus_1_the_unconditional():
    """Through ddim.ddim_sample at eta = 0.5 (its noise too), for a v-predicting network:
    w = 0 gives the samples of net(x, t, c), w = -1 those of net(x, t, None), and w = 2 those of
    Eq. 6 written out here, 3 net(x, t, c) - 2 net(x, t, None), from one call of 2B per step."""
    net, abar = tiny_net(3), ddim.make_schedule("linear", 50)["alphas_cumprod"]
    pairs, c = ddim.timestep_pairs(50, 3, "uniform"), torch.tensor([0, 1, 2, 1])

    def sample(model, **guidance):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, 3, 16, 16, generator=gen)
        return ddim.ddim_sample(model, abar, x, pairs, "v", 0.5, True,
                                lambda: torch.randn(4, 3, 16, 16, generator=gen), **guidance)

    conditional = sample(lambda x, t: net(x, t, c))
    unconditional = sample(lambda x, t: net(x, t))
    assert (conditional - unconditional).abs().mean() > 0.01  # the label matters
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sample(net, c=c, w=0.0), conditional, **tol)
    torch.testing.assert_close(sample(net, c=c, w=-1.0), unconditional, **tol)
    counting = Counting(net)
    torch.testing.assert_close(sample(counting, c=c, w=2.0),
                               sample(lambda x, t: 3 * net(x, t, c) - 2 * net(x, t)), **tol)
    assert counting.batches == [8] * len(pairs)  # one call per step, both halves batched


def test_labels_are_drawn_with_the_class_frequencies():
    """n = 20,000 labels: each class's share is within 5 binomial standard errors,
    sqrt(p (1 - p) / n), of p = count / total (SE 0.001 for the 2% class, which a uniform draw
    would give 25%); another seed draws other labels."""
    classes, n = {"a": 600, "b": 300, "c": 80, "d": 20}, 20_000
    labels = ddim.draw_labels(classes, ddim.Config(seed=3), 0, n).numpy()
    p = np.array(list(classes.values())) / sum(classes.values())
    share = np.bincount(labels, minlength=len(p)) / n
    assert np.all(np.abs(share - p) < 5 * np.sqrt(p * (1 - p) / n)), (share, p)
    other = ddim.draw_labels(classes, ddim.Config(seed=4), 0, 1000).numpy()
    assert (other != labels[:1000]).mean() > 0.3


def test_image_k_label_does_not_depend_on_the_batch(monkeypatch):
    """sample_images hands ddim_sample image k's label whatever the batch (as its noise); one
    class for all with --label (a name or an index), image 0's along an --interp strip, class k
    for image k of the --guidance-grid; and --guidance as w."""
    seen = []

    def spy(net, abar, x, pairs, prediction, eta, clip, noise, bf16, record, tag, c, w):
        seen.append((c.tolist(), w))
        return x
    monkeypatch.setattr(ddim, "ddim_sample", spy)
    c = dict(image_size=2, T=50, prediction="eps", classes=CLASSES)
    abar, cfg = ddim.make_schedule("linear", 50)["alphas_cumprod"], ddim.Config(seed=5, guidance=2)

    def labels(cfg, *spans):
        seen.clear()
        for first, count in spans:
            ddim.sample_images(None, abar, c, cfg, first, count)
        assert {w for _, w in seen} == {cfg.guidance}
        return sum((c for c, _ in seen), [])
    whole = labels(cfg, (0, 50))
    assert labels(cfg, (0, 20), (20, 20), (40, 10)) == whole and len(set(whole)) == 3
    assert labels(replace(cfg, seed=6), (0, 50)) != whole
    assert labels(replace(cfg, label="blue"), (0, 7)) == labels(replace(cfg, label="1"), (0, 7))
    assert labels(replace(cfg, label="1"), (0, 7)) == [1] * 7
    assert labels(replace(cfg, interp=True), (0, 8)) == [whole[0]] * 8
    assert labels(replace(cfg, guidance_grid=True, guidance=0), (0, 3)) == [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# The command line, on tiny checkpoints written by ddpm.py's save_checkpoint.


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """cond.pt: 16 px, T = 50, 3 classes, as `ddpm.py --train --cond` saves it at step 2.
    uncond.pt: the same without labels, its config's cond False but a non-empty classes dict,
    which must not make it conditional."""
    folder, paths = tmp_path_factory.mktemp("ddpm"), {}
    for name, cond in (("cond", True), ("uncond", False)):
        cfg = ddpm.Config(image_size=16, **ARCH, T=50, prediction="eps", cond=cond)
        net = tiny_net(len(CLASSES) if cond else 0)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        paths[name] = folder / f"{name}.pt"
        ddpm.save_checkpoint(str(paths[name]), dict(model=net, ema=net, opt=opt), cfg, 2, CLASSES)
    return paths


def cells(path, n):
    """The first n 16 px images of a grid's first row (2 px gaps), as int arrays."""
    grid = np.asarray(Image.open(path), int)
    return [grid[2:18, 2 + 18 * k:18 + 18 * k] for k in range(n)]


def test_label_by_name_or_index_and_output_names(ckpts, tmp_path, capsys):
    """--label blue and --label 1 give the same images; without --label, image k is the image k
    of the run with --label of image k's drawn class (same noise, same label); w and the label
    are in every name, so runs never overwrite each other; --n 65 writes 65 PNGs (FID)."""
    out, runs = ["--ckpt", ckpts["cond"], "--steps", "3", "--n", "4"], {}
    for label in ("blue", "1", "red", "bald", ""):  # each in a folder of its own
        ddim.main([str(a) for a in out + ["--out", tmp_path / f"run{label}", "--guidance", "2"]
                   + ["--label", label] * bool(label)])
        shown = f"_label-{'blue' if label == '1' else label}" if label else ""  # 1 is blue
        runs[label] = cells(tmp_path / f"run{label}/ddim_cond_step2_uniform3_eta0_w2{shown}"
                            "_seed0.png", 4)
    assert all(np.array_equal(a, b) for a, b in zip(runs["blue"], runs["1"]))
    assert np.abs(runs["blue"][0] - runs["red"][0]).mean() > 2  # the label is used
    drawn = ddim.draw_labels(CLASSES, ddim.Config(), 0, 4).tolist()
    for k, label in enumerate(drawn):
        assert np.abs(runs[""][k] - runs[list(CLASSES)[label]][k]).max() <= 1, (k, drawn)
    out += ["--out", tmp_path / "run"]
    ddim.main([str(a) for a in out])  # w = 0 by default: the conditional network
    w0 = cells(tmp_path / "run/ddim_cond_step2_uniform3_eta0_w0_seed0.png", 4)
    assert np.abs(np.stack(w0) - np.stack(runs[""])).mean() > 2
    ddim.main([str(a) for a in out + ["--guidance", "2", "--n", "65", "--steps", "1"]])
    pngs = tmp_path / "run/ddim_cond_step2_uniform1_eta0_w2_seed0_n65"
    assert len(list(pngs.glob("*.png"))) == 65
    ddim.main([str(a) for a in ["--ckpt", ckpts["uncond"], "--out", tmp_path, "--steps", "2"]])
    assert (tmp_path / "ddim_uncond_step2_uniform2_eta0_seed0.png").exists()  # no classes: no w
    capsys.readouterr()


def test_guidance_grid_is_classes_by_w(ckpts, tmp_path):
    """--guidance-grid: a row per class (its name at the left), columns w = 0, 1, 3; row k is
    image k of the runs with --label k at those w (the same noise along a row), within one uint8
    level of rounding, and the columns differ."""
    out = ["--ckpt", str(ckpts["cond"]), "--out", str(tmp_path), "--steps", "3"]
    ddim.main(out + ["--guidance-grid"])
    name = "ddim_cond_step2_uniform3_classes_w0-1-3_eta0_seed0.png"  # w = 0, 1, 3 in the name
    grid = np.asarray(Image.open(tmp_path / name))
    left = 8 + 6 * max(map(len, CLASSES))
    assert grid.shape == (3 * 18 + 2, left + 3 * 18 + 2, 3)
    assert (grid[:, :left] < 128).any()  # the names are drawn
    grid = grid.astype(int)
    for j, w in enumerate((0, 1, 3)):
        ddim.main(out + ["--n", "3", "--label", "blue", "--guidance", str(w)])
        row = cells(tmp_path / f"ddim_cond_step2_uniform3_eta0_w{w}_label-blue_seed0.png", 3)
        assert np.abs(grid[20:36, left + 2 + 18 * j:left + 18 + 18 * j] - row[1]).max() <= 1, w
    assert np.abs(grid[20:36, left + 2:left + 18] - grid[20:36, left + 38:left + 54]).mean() > 2


@pytest.mark.parametrize("ckpt, argv, says", [
    ("cond", ["--label", "purple"], "--label purple: no such class -- pass one of red, blue, bald"),
    ("cond", ["--label", "3"], "--label 3: no such class"),
    ("cond", ["--label", "-1"], "--label -1: no such class"),
    ("uncond", ["--guidance", "1"], "uncond.pt has no classes"),
    ("uncond", ["--label", "red"], "uncond.pt has no classes"),
    ("uncond", ["--guidance-grid"], "uncond.pt has no classes"),
    ("cond", ["--guidance", "-2"], "--guidance -2.0: must be -1 to 100"),
    ("cond", ["--guidance", "1e308"], "--guidance 1e+308: must be -1 to 100"),
    ("cond", ["--guidance", "inf"], "--guidance inf: must be a finite number"),
    ("cond", ["--guidance-grid", "--guidance", "2"], "take no --label or --guidance"),
    ("cond", ["--invert", "x.png", "--label", "red"], "take no --label or --guidance"),
    ("cond", ["--guidance-grid", "--interp"], "separate runs"),
])
def test_bad_labels_and_guidance_are_one_line_before_any_work(ckpts, ckpt, argv, says, tmp_path):
    with pytest.raises(SystemExit) as e:
        ddim.main(["--ckpt", str(ckpts[ckpt]), "--out", str(tmp_path)] + argv)
    message = str(e.value.code)
    assert message.startswith("ddim.py: ") and "\n" not in message and says in message, message
    assert not any(tmp_path.iterdir())  # nothing written
