"""cartoons.py: the pinned pixels, layout, determinism per seed, prefix property, variety; the
command line: the grid, the PNG folder an FID tool reads, and one line for each bad input."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import PIL
import pytest
from PIL import Image

import cartoons

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cartoons.py")

# sha256 of make(n, size, seed)'s bytes, taken from the code of commit 3dfff5e with Pillow 13.0.0
# and numpy 2.4. Every FID in the README was measured against these faces: if this fails, the faces
# changed (a drawing edit, or a Pillow release that draws or resamples differently), and FIDs
# before and after are no longer comparable. 256 faces at 64 px reach every branch of draw_face.
PINS = {(256, 64, 0): "482efcc4dfa92d4bc9df91fb92490a36fe29c8a9c53d8352ef5e44aecf6c5230",
        (6, 32, 3): "4d4a2339073b18ca52c33c16cac5bd80ad7cb319918b60974b3dbefb0fbb693e",
        (3, 128, 1): "d4ca5d1b43dc595c74c2f85550e403b96427019837abb82f0f6ebb6d472ebc8b",
        (4, 17, 2): "329f797e3b3741e4851564da651327505f72a05289de8f4442c0c489e014f9da"}


def test_pixels_are_pinned():
    for (n, size, seed), digest in PINS.items():
        x = cartoons.make(n, size, seed=seed, workers=1)
        assert hashlib.sha256(x.tobytes()).hexdigest() == digest, (n, size, seed, PIL.__version__)


def test_layout_and_determinism():
    a = cartoons.make(12, size=32, seed=3, workers=1)
    assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, cartoons.make(12, size=32, seed=3, workers=1))
    assert not np.array_equal(a, cartoons.make(12, size=32, seed=4, workers=1))
    assert np.array_equal(a[:5], cartoons.make(5, size=32, seed=3, workers=1))  # face i: (seed, i)


def test_faces_differ_and_background_is_light():
    x = cartoons.make(60, size=64, seed=0, workers=1).astype(np.int32)
    flat = x.reshape(len(x), -1)
    dist = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert dist[~np.eye(len(x), dtype=bool)].min() > 2  # no two faces alike (mean |diff| per value)
    assert x[:, 0, 0].min() >= 230 and x[:, -1, -1].min() >= 200  # light top corners
    assert x[:, 24:40, 24:40].mean() < 200  # something is drawn in the middle


def test_pool_gives_the_same_faces():
    """The pool's faces, in order, are the ones drawn one at a time (every 37th, so every chunk of
    64 is visited)."""
    pooled, labels = cartoons.make(1000, size=16, seed=1, workers=2, labels=True)
    assert np.array_equal(pooled, cartoons.make(1000, size=16, seed=1, workers=2))
    for i in range(0, 1000, 37):
        face, hair_class = cartoons._draw((1, i, 16))
        assert np.array_equal(pooled[i], face) and labels[i] == hair_class, i


def hair_colours_in(pixels):
    """Indices j of HAIR for which some pixel is a hair fill, shade(HAIR[j], f): each channel
    int(min(255, c f)), f in [0.9, 1.1], so f lies in one interval for all three. The buzz cut
    shades once more (x 1.15), flooring twice: a channel's upper end gets one unit more."""
    found = set()
    for j, rgb in enumerate(cartoons.HAIR):
        c = np.array(rgb, float)
        lo = np.where(pixels < 255, pixels / c, 255 / c).max(1)  # int() floors: f >= p / c
        hi = np.where(pixels < 255, (pixels + 2) / c, np.inf).min(1)  # and f < (p + 2) / c
        found |= {j} if np.any((lo < hi) & (hi > 0.9) & (lo < 1.1 * 1.15)) else set()
    return found


def test_hair_class_is_the_colour_on_top_of_the_head():
    """Label k < 12: the centre column above the eyes (y < 75 of 256; every style but bald puts
    hair there) holds a fill of HAIR[k] and of no other colour; "bald": no hair fill at all."""
    for i in range(60):
        img, k = cartoons.draw_face(np.random.default_rng([5, i]))
        column = np.asarray(img)[:75, 128].astype(float)
        colours, count = np.unique(column, axis=0, return_counts=True)
        column = colours[(count >= 6) & (colours != np.asarray(img)[0, 0]).any(1)]  # fills,
        # not the background; the 3 px outlines (skin x 0.55) can look like a dark hair colour
        assert hair_colours_in(column) == ({k} if k < 12 else set()), (i, k)


def run(folder, *args):
    """python cartoons.py ARGS in folder; a time limit, as a size with no cap once hung."""
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=folder, capture_output=True,
                          text=True, timeout=60)


def test_grid_holds_the_faces_in_rows(tmp_path):
    r = run(tmp_path, "--n", "5", "--size", "16", "--seed", "2", "--out", "new/dir/grid.png")
    assert r.returncode == 0 and r.stderr == ""
    assert os.listdir(tmp_path / "new/dir") == ["grid.png"]  # the missing folders were made
    g = np.asarray(Image.open(tmp_path / "new/dir/grid.png"))
    assert g.shape == (2 * 18 + 2, 3 * 18 + 2, 3)  # 5 faces: 3 columns, 2 rows, 2 px gaps
    for k, face in enumerate(cartoons.make(5, 16, seed=2, workers=1)):
        r0, c0 = 2 + k // 3 * 18, 2 + k % 3 * 18
        assert np.array_equal(g[r0:r0 + 16, c0:c0 + 16], face), k
    assert (g[:2] == 255).all() and (g[18:20] == 255).all() and (g[20:, 38:] == 255).all()


def test_png_folder_holds_exactly_the_faces_of_make(tmp_path):
    """The FID reference: PNGs are lossless, so each file is make()'s face to the bit. Defaults
    (64 px, seed 0) are ddpm.py's training faces; --n 4 is their start (face i: (seed, i))."""
    names = [f"{i:06d}.png" for i in range(4)]
    for _ in range(2):  # the same command again rewrites the same files
        r = run(tmp_path, "--png-folder", "ref", "--n", "4")
        assert r.returncode == 0 and r.stderr == ""
        assert sorted(os.listdir(tmp_path / "ref")) == names
    for name, face in zip(names, cartoons.make(4, 64, seed=0, workers=1)):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "ref" / name)), face), name
    r = run(tmp_path, "--png-folder", "ref", "--n", "4", "--size", "32", "--seed", "3")
    assert r.returncode == 0
    for name, face in zip(names, cartoons.make(4, 32, seed=3, workers=1)):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "ref" / name)), face), name


def one_line_and_nothing_written(r, folder, before):
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("cartoons.py: ")
    assert " -- " in r.stderr  # the problem, then the fix
    assert sorted(os.listdir(folder)) == before  # checked before drawing; no test file left


@pytest.mark.parametrize("args", [
    ["--out", "grid"], ["--out", "grid.psd"],  # Pillow cannot write these
    ["--out", "a_file/grid.png"], ["--png-folder", "a_file"],  # a file where a folder must be
    ["--seed", "-1"], ["--size", "200000"], ["--size", "7"], ["--n", "0"],
    ["--seed", "x"], ["--out", "g.png", "--png-folder", "ref"], ["--nn", "3"]])
def test_bad_input_gets_one_line(tmp_path, args, monkeypatch, as_command):
    (tmp_path / "a_file").write_text("")
    monkeypatch.chdir(tmp_path)
    one_line_and_nothing_written(as_command("cartoons.py", *args), tmp_path, ["a_file"])


def test_read_only_place_gets_one_line(tmp_path, monkeypatch, as_command):
    place = tmp_path / "read_only"
    place.mkdir()
    place.chmod(0o500)
    if os.access(place, os.W_OK):  # root writes there anyway, but not into /proc
        place = "/proc/cartoons_test"
    monkeypatch.chdir(tmp_path)
    for args in (["--out", f"{place}/grid.png"], ["--png-folder", f"{place}/ref"]):
        one_line_and_nothing_written(as_command("cartoons.py", *args), tmp_path, ["read_only"])


def test_png_folder_with_other_files_gets_one_line(tmp_path, monkeypatch, as_command):
    """An FID tool reads every image in the folder: files left from another run would count."""
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "000009.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    one_line_and_nothing_written(as_command("cartoons.py", "--png-folder", "ref", "--n", "3"),
                                 tmp_path / "ref", ["000009.png"])
