"""cartoons.py: layout, determinism per seed, prefix property, variety."""
import numpy as np

import cartoons


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
