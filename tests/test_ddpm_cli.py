"""ddpm.py end to end on the CPU with a tiny network: train, sample, resume exactly, Ctrl-C, NaN,
bad input."""
import math
import os
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm

TINY = ["--ch", "16", "--ch-mult", "1,2", "--attn-levels", "1", "--batch", "4", "--n-images", "16",
        "--image-size", "16", "--T", "50", "--sample-every", "0", "--log-every", "1",
        "--warmup", "1", "--sample-steps", "4"]


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


def test_minutes_replace_steps_and_plan_the_lr_on_the_clock(in_tmp, monkeypatch, step_clock):
    """--minutes M trains for M minutes whatever --steps says; the LR's cosine runs on the clock."""
    step_clock(ddpm, first=0.07, rest=0.05)
    lrs = record_lrs(monkeypatch)
    run("--train", "--steps", "1", "--minutes", "0.015")  # 0.9 s: 0.07 s + 17 x 0.05 s = 0.92 s
    ckpt = weights("ddpm.pt")
    assert ckpt["step"] == len(lrs) == 18 and ckpt["seconds"] == pytest.approx(0.92)
    # step k = 1..17 starts 0.05 (k - 1) s into the 0.83 s after the first: cosine 1 ... 0.0034
    expected = [8e-4 * 0.5 * (1 + math.cos(math.pi * max(k - 1, 0) * 0.05 / 0.83))
                for k in range(18)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert lrs[-1] < 0.05 * max(lrs) and lrs[9] > 0.2 * max(lrs)  # ends near 0, not long before


def test_minutes_start_the_lr_schedule_after_the_compile(in_tmp, monkeypatch, step_clock):
    """A first step that takes half the budget (as compiling does on a GPU) leaves the schedule
    untouched: the second step runs at the peak LR, and the cosine still ends near 0."""
    step_clock(ddpm, first=0.6, rest=0.07)  # half of the 1.2 s budget
    lrs = record_lrs(monkeypatch)
    run("--train", "--minutes", "0.02", "--lr", "1e-3")
    assert len(lrs) == 10  # 0.6 s + 9 x 0.07 s = 1.23 s
    assert lrs[1] > 0.99e-3  # progress ~0: cosine(0) = 1 (it was 0.5 with compile time counted)
    assert lrs[-1] < 0.02e-3  # progress 0.56 / 0.6 at the last step: cosine 0.011


def test_clock_progress():
    """The schedule's progress runs linearly from the first step's end to the budget's end."""
    assert ddpm.clock_progress(5.0, 60.0, None, 0.25) == 0.25  # compiling: not started
    assert ddpm.clock_progress(20.0, 60.0, 20.0, 0.0) == 0.0
    assert ddpm.clock_progress(40.0, 60.0, 20.0, 0.0) == pytest.approx(0.5)
    assert ddpm.clock_progress(40.0, 60.0, 20.0, 0.5) == pytest.approx(0.75)  # resumed half-way
    assert ddpm.clock_progress(70.0, 60.0, 20.0, 0.0) == 1.0


def test_minutes_resume_goes_on_from_the_share_of_the_budget_used(in_tmp, monkeypatch, step_clock):
    """--resume with a longer --minutes starts its schedule at (seconds so far) / (new budget)."""
    step_clock(ddpm, first=0.07, rest=0.05)
    run("--train", "--minutes", "0.005")
    seconds = weights("ddpm.pt")["seconds"]
    lrs = record_lrs(monkeypatch)
    run("--train", "--resume", "--minutes", "0.01")
    assert lrs[0] == pytest.approx(8e-4 * 0.5 * (1 + math.cos(math.pi * seconds / 0.6)))
    assert weights("ddpm.pt")["seconds"] >= 0.6


def interrupt_at(monkeypatch, call):
    """Press Ctrl-C (send SIGINT to this process) during the training step's call-th call."""
    make = ddpm.make_trainer

    def patched(*args):
        model, ema, opt, step = make(*args)
        calls = []

        def interrupted(*args):
            calls.append(1)
            if len(calls) == call:
                os.kill(os.getpid(), signal.SIGINT)
            return step(*args)
        return model, ema, opt, interrupted
    monkeypatch.setattr(ddpm, "make_trainer", patched)


def test_ctrl_c_saves_and_resume_continues_exactly(in_tmp, monkeypatch):
    """4 steps in one go == Ctrl-C during step 2 (which finishes and is saved), --resume to 4:
    the same weights to the bit (CPU)."""
    run("--train", "--steps", "4", "--ckpt", "straight.pt")
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        with pytest.raises(SystemExit) as stop:
            run("--train", "--steps", "4", "--ckpt", "split.pt")
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


def test_a_crash_while_saving_keeps_the_previous_checkpoint(in_tmp, monkeypatch):
    run("--train", "--steps", "1")
    before = weights("ddpm.pt")

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError):
        ddpm.save_checkpoint("ddpm.pt", step=99)
    assert weights("ddpm.pt")["step"] == before["step"]


def test_checkpoints_written_in_the_background_hold_the_state_of_their_step(in_tmp, monkeypatch):
    """Each save is slowed down, so that the next steps run while it writes: the checkpoint of
    step 2 must hold step 2's weights and optimizer state (those of a run that stops there)."""
    constant = ["--lr-decay", "constant"]  # the LR of steps 1 and 2 must not depend on --steps
    run("--train", "--steps", "2", "--ckpt", "two.pt", *constant)
    saved, save = [], ddpm.save_checkpoint

    def slow_save(path, **state):
        time.sleep(0.5)  # steps 3 and 4 run meanwhile
        saved.append(state)
        save(path, **state)
    monkeypatch.setattr(ddpm, "save_checkpoint", slow_save)
    run("--train", "--steps", "4", "--ckpt-every", "2", "--ckpt", "four.pt", *constant)
    assert [s["step"] for s in saved] == [2, 4]  # step 4 once: both a --ckpt-every and the last
    two = weights("two.pt")
    for part in ("model", "ema"):
        for k, v in two[part].items():
            assert torch.equal(saved[0][part][k], v), f"{part}.{k} is not step 2's"
    moment = two["opt"]["state"][0]["exp_avg"]
    assert torch.equal(saved[0]["opt"]["state"][0]["exp_avg"], moment)
    assert not torch.equal(saved[1]["opt"]["state"][0]["exp_avg"], moment)  # steps 3, 4 moved it


def test_a_failed_checkpoint_write_stops_with_one_line(in_tmp, monkeypatch):
    def disk_full(obj, f):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    message = error_of(["--train", "--steps", "3", *TINY, "--ckpt-every", "1"])
    assert "could not write ddpm.pt (No space left on device)" in message


def test_bench_runs_on_cpu(in_tmp, capsys):
    run("--bench")
    out = capsys.readouterr().out
    assert "MFU" in out and "img/s" in out and "network evals/s at batch" in out and "calls," in out


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
    images, skipped = ddpm.load_folder(str(tmp_path / "imgs"), 16)
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
    images, _ = ddpm.load_folder(str(tmp_path / "d"), 8)
    assert images[0, :, 1:-1, 2].min() > 200 and images[0, :, 1:-1, 0].max() < 60


@pytest.mark.parametrize("argv,says", [
    (["--train", "--data", "no/such/dir"], "no such folder"),
    (["--train", "--image-size", "60"], "multiple of 8"),
    (["--train", "--lr", "-1"], "--lr"),
    (["--train", "--schedule", "cosinus"], "use linear | cosine"),
    (["--train", "--prediction", "score"], "use eps | x0 | v"),
    (["--train", "--steps", "0"], "--steps"),
    (["--train", "--sample-steps", "2000"], "--sample-steps"),
    (["--train", "--ch-mult", "1,x"], "--ch-mult"),
    (["--sample", "--ckpt", "missing.pt"], "no checkpoint"),
    (["--sample", "--resume"], "--resume goes with --train"),
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
    assert "--resume" in error_of(["--train", *TINY])  # an existing ddpm.pt is not overwritten
    message = error_of(["--train", "--resume", "--ch", "32", *TINY[2:]])
    assert "does not fit" in message
    (in_tmp / "file").write_text("")  # a file where a folder should be: found before training
    assert "writable --out and --ckpt" in error_of(["--train", *TINY, "--ckpt", "file/x.pt"])
    assert "file/o (Not a directory)" in error_of(["--train", *TINY, "--ckpt", "b.pt", "--out",
                                                  "file/o"])
    assert "writable --out" in error_of(["--sample", "--ckpt", "ddpm.pt", "--out", "file/o"])
