"""ddpm.py end to end with a tiny network: train, sample, resume exactly, Ctrl-C, NaN, bad input.
Uncompiled (on a GPU, compiling each tiny run would take most of the time): test_ddpm.py's EMA and
CUDA-graph tests run the compiled training step."""
import math
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm

TINY = ["--ch", "16", "--ch-mult", "1,2", "--attn-levels", "1", "--batch", "4", "--n-images", "16",
        "--image-size", "16", "--T", "50", "--sample-every", "0", "--log-every", "1",
        "--warmup", "1", "--sample-steps", "4", "--no-compile"]


def run(*argv):
    return ddpm.main([*argv, *TINY])


def error_of(argv):
    """The one-line message ddpm.py stops with."""
    with pytest.raises(SystemExit) as stop:
        ddpm.main(argv)
    message = str(stop.value.code)
    assert "\n" not in message and message.startswith("ddpm.py: ")
    return message


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def weights(path):
    return torch.load(path, weights_only=True)


def test_train_sample_resume(in_tmp):
    run("--train", "--steps", "2")
    ckpt = weights("ddpm.pt")
    assert ckpt["kind"] == "ddpm" and ckpt["step"] == 2 and ckpt["config"]["ch"] == 16
    assert os.path.exists("out/ddpm_train_step0000002.png")
    ddpm.main(["--sample", "--ckpt", "ddpm.pt", "--n", "3"])  # no other flags needed
    assert Image.open("out/ddpm_step2_small4_seed0.png").size[0] > 16
    assert Image.open("out/ddpm_step2_small4_seed0.gif").n_frames > 2
    ddpm.main(["--sample", "--ckpt", "ddpm.pt", "--n", "70", "--sample-batch", "32"])  # 3 batches
    assert len(os.listdir("out/ddpm_step2_small4_seed0_n70")) == 70
    ddpm.main(["--train", "--resume", "--steps", "3"])
    assert weights("ddpm.pt")["step"] == 3


def record_lrs(monkeypatch):
    lrs, rate = [], ddpm.learning_rate
    monkeypatch.setattr(ddpm, "learning_rate", lambda *a: lrs.append(rate(*a)) or lrs[-1])
    return lrs


def test_minutes_plan_the_steps_that_fit_after_timing_ten(in_tmp, monkeypatch, step_clock):
    """--minutes M: the budget counts from the first step (the compile); steps 4 to 13 are timed
    and the rest planned to fill what is left, whatever --steps says, and the cosine LR then runs
    to 0 by step: here 30 s, a first step of 8 s, then 1 s a step: 13 + (30 - 8 - 12 x 1) / 1 = 23
    steps."""
    step_clock(ddpm, first=8.0, rest=1.0)
    lrs = record_lrs(monkeypatch)
    run("--train", "--steps", "100000", "--minutes", "0.5", "--log-every", "10")
    ckpt = weights("ddpm.pt")
    assert ckpt["step"] == len(lrs) == 23
    assert ckpt["config"]["steps"] == 23 and ckpt["config"]["minutes"] == 0  # --resume: no more
    expected = [8e-4 * 0.5 * (1 + math.cos(math.pi * k / 23)) for k in range(13, 23)]
    assert lrs[13:] == pytest.approx(expected, rel=1e-9)  # by step, to 0 at the planned end
    assert lrs[1] > 0.99 * 8e-4  # before the plan: the provisional end leaves the peak LR


def test_minutes_with_resume_plans_that_many_more_minutes(in_tmp, monkeypatch, step_clock):
    run("--train", "--steps", "3")
    step_clock(ddpm, first=1.0, rest=0.25)
    run("--train", "--resume", "--minutes", "0.1", "--log-every", "10")  # 6 s: 13 + (6 - 1 - 3)
    assert weights("ddpm.pt")["step"] == 3 + 21  # / 0.25 = 21 steps


def interrupt_at(monkeypatch, call):
    """Press Ctrl-C (send SIGINT to this process) during the call-th training step."""
    loss, calls = ddpm.diffusion_loss, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(*args)
    monkeypatch.setattr(ddpm, "diffusion_loss", interrupted)


def test_ctrl_c_saves_and_resume_continues_exactly(in_tmp, monkeypatch):
    """4 steps in one go == Ctrl-C during step 2 (which finishes and is saved), --resume to 4:
    the same weights to the bit, on the CPU (CUDA's bf16 kernels and graphs promise no bits)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run("--train", "--steps", "4", "--ckpt", "straight.pt", "--log-every", "10")
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        with pytest.raises(SystemExit) as stop:
            run("--train", "--steps", "4", "--ckpt", "split.pt", "--log-every", "10")
        assert stop.value.code == 130
    assert weights("split.pt")["step"] == 2
    run("--train", "--resume", "--steps", "4", "--ckpt", "split.pt")
    a, b = weights("straight.pt"), weights("split.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(in_tmp, monkeypatch):
    loss = ddpm.diffusion_loss
    calls = []

    def nan_from_step_4(*args):
        calls.append(1)
        return loss(*args) * (float("nan") if len(calls) >= 4 else 1.0)
    monkeypatch.setattr(ddpm, "diffusion_loss", nan_from_step_4)
    # checks every 10 steps, saves every 2: the save at step 4 must check first, and refuse
    message = error_of(["--train", "--steps", "10", *TINY, "--ckpt-every", "2",
                        "--log-every", "10"])
    assert "nan" in message.lower() and "ddpm.pt" in message
    ckpt = weights("ddpm.pt")
    assert ckpt["step"] == 2 and all(v.isfinite().all() for v in ckpt["model"].values())


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("PytorchStreamWriter failed writing file")])
def test_a_failed_checkpoint_write_stops_with_one_line_and_keeps_the_last(in_tmp, monkeypatch,
                                                                          error):
    """A full disk mid-save (torch raises OSError or RuntimeError): one line, the .tmp file gone,
    the checkpoint of step 2 as it was."""
    run("--train", "--steps", "2")
    before, save = weights("ddpm.pt"), torch.save

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise error
    monkeypatch.setattr(torch, "save", dies_halfway)
    message = error_of(["--train", "--resume", "--steps", "4", *TINY])
    monkeypatch.setattr(torch, "save", save)
    assert message.startswith("ddpm.py: could not write ddpm.pt") and "intact" in message
    assert not os.path.exists("ddpm.pt.tmp") and weights("ddpm.pt")["step"] == before["step"]


def test_progress_lines_have_a_sane_rate_from_the_first_step(in_tmp, capsys, step_clock):
    """The first line comes right after step 1 with an ETA from that step; after --resume too;
    no line says 0 img/s or an ETA beyond the steps left at the measured rate (uncompiled: on
    CUDA the first line says "compiling" instead)."""
    clock = step_clock(ddpm, first=2.0, rest=0.5)
    run("--train", "--steps", "3")
    clock["steps"] = 0  # the resumed run's first step is slow again
    run("--train", "--resume", "--steps", "6")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3", "4/6", "5/6", "6/6"]
    assert "ETA 0.1 min" in lines[0] and "ETA 0.1 min" in lines[3]  # 2 steps x 2.0 s
    assert all("| 8 img/s | ETA" in line for line in lines if line.split()[1] in ("2/3", "5/6"))


def write_images(folder):
    """One image per mode and format the loader must take, plus files it must skip or ignore."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 50, 3), np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb).save(folder / "photo.jpg")
    Image.fromarray(rgb).save(folder / "pic.webp")
    Image.fromarray(rgb).save(folder / "pic.bmp")
    Image.fromarray(rgb[:, :, 0]).save(folder / "grey.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    rgba = np.dstack([rgb, np.full((30, 50), 0, np.uint8)])  # fully transparent: white
    Image.fromarray(rgba, "RGBA").save(folder / "clear.png")
    Image.fromarray(np.full((40, 20), 65535, np.uint16)).save(folder / "deep16.png")  # 16-bit white
    (folder / "sub").mkdir()
    Image.fromarray(rgb).save(folder / "sub" / "nested.PNG")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("ignored")


def test_load_folder_takes_every_mode_and_counts_unreadable(tmp_path):
    write_images(tmp_path / "imgs")
    images, skipped, folders = ddpm.load_folder(str(tmp_path / "imgs"), 16)
    images = np.stack(images)
    assert sorted(set(folders)) == [".", "sub"]  # the top subfolder of each, "." for none
    assert images.shape == (9, 16, 16, 3) and images.dtype == np.uint8 and skipped == 1
    # sorted by path: clear.png, deep16.png, grey.png, ...; transparency and 16-bit white stay white
    assert (images[0] == 255).all() and (images[1] == 255).all()


def test_center_crop_keeps_the_middle(tmp_path):
    """A wide image, red at the sides and blue in the middle square: the crop is all blue."""
    (tmp_path / "d").mkdir()
    im = np.zeros((40, 120, 3), np.uint8)
    im[:, :, 0] = 255
    im[:, 40:80] = (0, 0, 255)
    Image.fromarray(im).save(tmp_path / "d" / "wide.png")
    images = np.stack(ddpm.load_folder(str(tmp_path / "d"), 8)[0])
    assert images[0, :, 1:-1, 2].min() > 200 and images[0, :, 1:-1, 0].max() < 60


@pytest.mark.parametrize("argv,says", [
    (["--train", "--data", "no/such/dir"], "no such folder"),
    (["--train", "--image-size", "60", "--ch-mult", "1,2,2,2"], "multiple of 8"),
    (["--train", "--ch-mult", "1,-2"], "multipliers of 1 or more"),
    (["--train", "--seed", "99999999999999999999"], "below 2^31"),
    (["--train", "--lr", "-1"], "--lr"),
    (["--train", "--lr", "nan"], "--lr nan: must be a finite number"),
    (["--train", "--ema-halflife-kimg", "inf"], "--ema-halflife-kimg inf: must be a finite"),
    (["--train", "--image-size", "100000"], "--image-size 100000"),
    (["--train", "--T", "20"], "--T 20: must be a finite number, 21 or more"),
    (["--train", "--schedule", "cosinus"], "invalid choice: 'cosinus'"),
    (["--train", "--prediction", "score"], "invalid choice: 'score'"),
    (["--train", "--steps", "0"], "--steps"),
    (["--train", "--sample-steps", "2000"], "--sample-steps"),
    (["--train", "--ch-mult", "1,x"], "--ch-mult"),
    (["--train", "--p-uncond", "0"], "--p-uncond 0.0: must be a finite number, in (0, 1]"),
    (["--train", "--guidance", "1e308"], "--guidance 1e+308: must be a finite number, -1 to 100"),
    (["--sample", "--ckpt", "missing.pt"], "no checkpoint"),
    ([], "required"),
])
def test_bad_input_gets_one_clear_line(in_tmp, argv, says):
    assert says in error_of(argv)


def test_bad_folders_and_checkpoints(in_tmp):
    (in_tmp / "empty").mkdir()
    assert "no readable images" in error_of(["--train", "--data", "empty", *TINY])
    (in_tmp / "junk").mkdir()
    (in_tmp / "junk" / "a.png").write_bytes(b"\x89PNG broken")
    assert "1 unreadable" in error_of(["--train", "--data", "junk", *TINY])
    (in_tmp / "corrupt.pt").write_bytes(b"garbage")
    assert "not a readable checkpoint" in error_of(["--sample", "--ckpt", "corrupt.pt"])
    torch.save({"kind": "vae", "config": {}}, "vae.pt")
    assert "vae checkpoint" in error_of(["--sample", "--ckpt", "vae.pt"])
    torch.save({"weights": torch.zeros(3)}, "plain.pt")
    assert "no checkpoint of this repository" in error_of(["--sample", "--ckpt", "plain.pt"])
    run("--train", "--steps", "1")
    for args in (["--sample", "--n", "1", "--guidance", "2"], ["--sample", "--cond"],
                 ["--train", *TINY, "--ckpt", "g.pt", "--guidance", "2"]):  # not silently unguided
        assert "trained with --cond" in error_of(args)
    assert "--resume" in error_of(["--train", *TINY])  # an existing ddpm.pt is not overwritten
    message = error_of(["--train", "--resume", "--ch", "32", *TINY[2:]])
    assert "does not fit" in message and "--cond" in message
    (in_tmp / "file").write_text("")  # a file where a folder should be: found before training
    assert "writable --out or --ckpt" in error_of(["--train", *TINY, "--ckpt", "file/x.pt"])
    assert "file/o (Not a directory)" in error_of(["--train", *TINY, "--ckpt", "b.pt", "--out",
                                                  "file/o"])
    assert "writable --out" in error_of(["--sample", "--ckpt", "ddpm.pt", "--out", "file/o"])


def test_grids_come_every_sample_every_steps_whatever_the_log_and_checkpoint_steps(in_tmp):
    ddpm.main(["--train", *TINY, "--steps", "6", "--sample-every", "5", "--log-every", "4",
               "--ckpt-every", "0"])
    assert sorted(os.listdir("out")) == [f"ddpm_train_step000000{k}.{ext}" for k in (5, 6)
                                         for ext in ("gif", "png")]


def test_resuming_a_finished_run_says_so(in_tmp):
    run("--train", "--steps", "2")
    assert "at step 2 already" in error_of(["--train", "--resume", *TINY, "--steps", "2"])


def test_a_nan_gradient_under_a_finite_loss_stops_too(in_tmp, monkeypatch):
    """From step 3 the first parameter's gradient is NaN while the loss stays finite: the run
    must stop before it saves the NaN weights, keeping step 2's checkpoint."""
    build, calls = ddpm.build_model, []

    def poisoned(cfg, *classes):
        model = build(cfg, *classes)
        first = next(model.parameters())
        first.register_hook(lambda g: calls.append(1) or (g * float("nan") if len(calls) >= 3
                                                          else g))
        return model
    monkeypatch.setattr(ddpm, "build_model", poisoned)
    message = error_of(["--train", *TINY, "--steps", "6", "--ckpt-every", "2"])
    assert "the loss became nan near step 3" in message
    assert weights("ddpm.pt")["step"] == 2



def test_cond_takes_subfolders_as_classes_and_stores_them(in_tmp):
    """--data with --cond: each top subfolder is a class (sorted names, ImageFolder's convention),
    images deeper down belong to their top subfolder; the checkpoint stores {name: count}, the
    network gets one label row per class and one for "no label", and --sample writes its grid
    under a name with w. Images outside any subfolder, or a single class, stop with one line."""
    rng = np.random.default_rng(0)
    red, blue = (255, 0, 0), (0, 0, 255)
    for name, n, rgb in (("red", 3, red), ("blue/deep", 2, blue), ("blue", 1, blue)):
        os.makedirs(f"data/{name}", exist_ok=True)
        for k in range(n):
            Image.new("RGB", (20, 20), rgb).save(f"data/{name}/{k}.png")
    images, labels, names = ddpm.load_data(ddpm.Config(data="data", image_size=16, cond=True))
    assert names == ["blue", "red"] and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert (images[:, 8, 8, 0] > 128).tolist() == (labels == 1).tolist()  # each its own class
    run("--train", "--steps", "2", "--data", "data", "--cond", "--batch", "6", "--ckpt", "hair.pt")
    ckpt = weights("hair.pt")
    assert ckpt["classes"] == {"blue": 3, "red": 3} and ckpt["config"]["cond"]
    assert ckpt["ema"]["label_emb.weight"].shape[0] == 3  # 2 classes + "no label"
    assert os.path.exists("out/hair_train_step0000002.png")  # grids named after the checkpoint
    ddpm.main(["--sample", "--ckpt", "hair.pt", "--n", "4", "--guidance", "2"])
    assert os.path.exists("out/hair_step2_small4_w2_seed0.png")
    os.rename("data/red", "data/green")  # same count, so the weights fit: labels would swap
    assert "learned other classes: blue, red" in error_of(["--train", "--resume", "--ckpt",
                                                           "hair.pt", "--steps", "3"])
    os.rename("data/green", "data/red")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8)).save("data/loose.png")
    for data in ("data", "data/red"):
        assert "one per class" in error_of(["--train", "--data", data, "--cond", *TINY, "--ckpt",
                                            "new.pt"])
