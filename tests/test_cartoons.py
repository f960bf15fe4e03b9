"""cartoons.py: the pinned pixels, layout, determinism per seed, prefix property, variety."""
import hashlib

import numpy as np
import PIL

import cartoons

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
    pooled = cartoons.make(1000, size=16, seed=1, workers=2)
    for i in range(0, 1000, 37):
        assert np.array_equal(pooled[i], cartoons._draw((1, i, 16))), i
