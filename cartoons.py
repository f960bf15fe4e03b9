"""The built-in dataset: 2D cartoon avatar faces, drawn with Pillow.

In the spirit of Google's Cartoon Set (https://google.github.io/cartoonset/): a flat-coloured head
on a plain light background, drawn on a 256 px canvas and downsampled with an antialiasing filter,
so edges are smooth at 32, 64 or 128 px. Face i depends only on (seed, i), so make(n) starts with
make(k) for k < n. The random choices (12 hair styles x 12 hair colours x 10 skin tones x 4 face
shapes x 4 eye styles x 5 iris colours x 4 brows x 3 noses x 5 mouths x 6 glasses x 5 facial hair)
give 3.7e9 faces, before the continuous sizes, positions and colour jitter.

    import cartoons
    x = cartoons.make(10_000, size=64, seed=0)      # uint8 [10000, 64, 64, 3]: ddpm.py's data
    python cartoons.py --n 64 --out cartoons.png    # a preview grid
    python cartoons.py --png-folder out/cartoons64  # those 10,000 faces as PNGs, FID's reference
"""
import argparse
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 256  # drawing resolution; the output is downsampled from it
MAX_SIZE = 1024  # the command line's cap: larger faces only blow the drawing up, and fill memory
SKIN = [(255, 224, 196), (250, 208, 172), (238, 193, 152), (224, 172, 132), (206, 150, 108),
        (182, 126, 88), (153, 101, 70), (124, 82, 57), (97, 64, 46), (74, 50, 39)]
HAIR = [(34, 30, 30), (68, 44, 30), (112, 72, 42), (144, 62, 34), (212, 104, 40), (226, 150, 82),
        (236, 196, 102), (242, 230, 188), (160, 160, 166), (236, 236, 236), (96, 132, 210),
        (226, 118, 160)]
HAIR_CLASSES = ["black", "dark-brown", "brown", "auburn", "ginger", "strawberry", "blonde",
                "platinum", "grey", "white", "blue", "pink", "bald"]  # HAIR, then the bald heads
IRIS = [(72, 44, 28), (60, 110, 180), (70, 130, 80), (110, 120, 130), (25, 25, 25)]
FRAMES = [(20, 20, 20), (140, 40, 40), (40, 60, 140), (190, 150, 60), (230, 90, 140)]

def shade(rgb, f):
    """A darker (f < 1) or lighter (f > 1) version of a colour."""
    return tuple(int(min(255, c * f)) for c in rgb)

def draw_face(rng):
    """One face as a 256x256 RGB PIL image, and its index in HAIR_CLASSES; all choices from rng."""
    img = Image.new("RGB", (CANVAS, CANVAS), tuple(int(v) for v in rng.integers(236, 256, 3)))
    d = ImageDraw.Draw(img)
    skin = shade(SKIN[rng.integers(len(SKIN))], rng.uniform(0.95, 1.05))
    hair_class = rng.integers(len(HAIR))
    hair = shade(HAIR[hair_class], rng.uniform(0.9, 1.1))
    line, hl = shade(skin, 0.55), shade(hair, 0.7)  # outlines: darker tones, as in Cartoon Set
    cx, cy = 128 + rng.uniform(-5, 5), 136 + rng.uniform(-5, 5)
    rx, ry = rng.uniform(56, 68), rng.uniform(70, 82)  # face half-width and half-height
    top, ey = cy - ry, cy - ry * rng.uniform(0.0, 0.12)  # the head's top, the eyes' height
    style = rng.integers(12)  # 0 bald, 1 buzz, 2 crop, 3 side part, 4 spiky, 5 long, 6 bob,
    # 7 afro, 8 bun, 9 pigtails, 10 mohawk, 11 wavy long

    # Hair behind the head: long styles, the bob, pigtails and the afro's volume.
    if style in (5, 11):
        drop = ry * rng.uniform(0.8, 1.3)
        d.rounded_rectangle([cx - rx - 14, top, cx + rx + 14, cy + drop], 44, hair, hl, 3)
        d.ellipse([cx - rx - 14, top - 14, cx + rx + 14, cy + ry * 0.4], hair)
        if style == 11:
            for y in cy + drop - 12 - np.arange(7) * 24:  # waves down both sides
                for x in (cx - (rx + 14), cx + (rx + 14)):
                    d.ellipse([x - 13, y - 13, x + 13, y + 13], hair)
    elif style == 6:
        d.rounded_rectangle([cx - rx - 13, top - 8, cx + rx + 13, cy + ry * 0.5], 40, hair, hl, 3)
    elif style == 7:
        r = rx + rng.uniform(22, 34)
        for a in np.linspace(0, 2 * np.pi, 18, endpoint=False):
            x, y = cx + r * 0.88 * np.cos(a), cy - 22 + r * 0.8 * np.sin(a)
            d.ellipse([x - 24, y - 24, x + 24, y + 24], hair)
        d.ellipse([cx - r, cy - 22 - r * 0.9, cx + r, cy - 22 + r * 0.7], hair)
    elif style == 9:
        for x in (cx - (rx + 24), cx + (rx + 24)):
            d.ellipse([x - 22, cy - 40, x + 22, cy + 8], hair, hl, 3)
    elif style == 8:
        r = rng.uniform(20, 28)
        d.ellipse([cx - r, top - 2 * r + 10, cx + r, top + 10], hair, hl, 3)

    # Ears, then the head itself in one of four shapes.
    for x in (cx - rx * 0.97, cx + rx * 0.97):
        d.ellipse([x - 12, ey - 6, x + 12, ey + 28], skin, line, 3)
    shape, box = rng.integers(4), [cx - rx, top, cx + rx, cy + ry]
    if shape == 0:    # oval
        d.ellipse(box, skin, line, 3)
    elif shape == 1:  # square jaw
        d.rounded_rectangle(box, rx * 0.6, skin, line, 3)
    elif shape == 2:  # heart: a wide cranium over a pointed chin
        d.polygon([(cx - rx + 2, cy), (cx, cy + ry), (cx + rx - 2, cy)], skin, line, 3)
        d.ellipse([cx - rx, top, cx + rx, cy + ry * 0.55], skin, line, 3)
        d.polygon([(cx - rx + 5, cy), (cx, cy + ry - 5), (cx + rx - 5, cy)], skin)
    else:             # round
        d.ellipse([cx - rx - 4, top + 8, cx + rx + 4, cy + ry], skin, line, 3)

    # Hair on the head: a band between an arc just outside the skull and a hairline across the
    # forehead that falls to the temples; depth, steepness and tilt make the styles.
    if style in (2, 3, 4, 5, 6, 7, 8, 9, 11, 1):
        thick = 3 if style == 1 else (14 if style == 7 else rng.uniform(6, 12))
        depth = ry * (rng.uniform(0.25, 0.4) if style not in (6, 9) else rng.uniform(0.45, 0.55))
        steep = 6 if style in (6, 9) else rng.uniform(2, 4)  # flat fringe vs. receding curve
        tilt = rng.uniform(-0.25, 0.25) * ry if style == 3 else 0  # a side part
        temple = ey - rng.uniform(8, 16)
        dlt = np.arcsin(np.clip((cy - temple) / (ry + thick), 0, 1))
        outer = [(cx + (rx + thick) * np.cos(a), cy + (ry + thick) * np.sin(a))
                 for a in np.linspace(np.pi + dlt, 2 * np.pi - dlt, 28)]
        inner = [(cx + u * rx * 0.99, top + depth + tilt * u
                  + (temple - top - depth - tilt * u) * abs(u) ** steep)
                 for u in np.linspace(1, -1, 28)]
        d.polygon(outer + inner, shade(hair, 1.0) if style != 1 else shade(hair, 1.15), hl, 3)
        if style == 4:
            for x in cx - rx + 10 + np.arange(7) * (2 * rx - 20) / 6:
                d.polygon([(x - 15, top + 12), (x + rng.uniform(-8, 8), top - rng.uniform(18, 32)),
                           (x + 15, top + 12)], hair)
    elif style == 10:
        d.rounded_rectangle([cx - 15, top - 30, cx + 15, top + ry * 0.45], 13, hair, hl, 3)

    # Eyebrows, eyes and nose, placed from the face's own proportions.
    gap, er = rx * rng.uniform(0.36, 0.46), rng.uniform(6, 10)  # eyes' half-distance and radius
    brow = shade(hair, 0.6) if style not in (0, 1) or rng.random() < 0.5 else shade(skin, 0.5)
    brow_kind, eye_kind = rng.integers(4), rng.integers(4)
    iris = IRIS[rng.integers(len(IRIS))]
    by = ey - er - rng.uniform(6, 10)
    for s in (-1, 1):
        x = cx + s * gap
        if brow_kind < 3:  # flat, raised at the outside, raised at the inside
            lift = (0, 5, -5)[brow_kind]
            d.line([(x - s * 14, by), (x + s * 14, by - lift)], brow, (3, 5, 7)[rng.integers(3)])
        else:              # arched
            d.arc([x - 15, by - 5, x + 15, by + 12], 200, 340, brow, 5)
        if eye_kind == 0:    # dots
            d.ellipse([x - er * 0.5, ey - er * 0.6, x + er * 0.5, ey + er * 0.6], (30, 25, 25))
        elif eye_kind == 3:  # closed, smiling
            d.arc([x - er, ey - er * 0.6, x + er, ey + er], 200, 340, (40, 30, 30), 3)
        else:                # open, with sclera, iris, pupil and a highlight; 2 adds lashes
            d.ellipse([x - er * 1.3, ey - er, x + er * 1.3, ey + er], (255, 255, 255), line, 2)
            d.ellipse([x - er * 0.7, ey - er * 0.7, x + er * 0.7, ey + er * 0.7], iris)
            d.ellipse([x - er * 0.35, ey - er * 0.35, x + er * 0.35, ey + er * 0.35], (15,) * 3)
            d.ellipse([x - er * 0.45, ey - er * 0.55, x - er * 0.1, ey - er * 0.2], (255,) * 3)
            if eye_kind == 2:
                d.line([(x + s * er * 1.2, ey - er * 0.6), (x + s * er * 1.7, ey - er * 1.1)],
                       (30, 25, 25), 3)
    ny, nose = ey + ry * rng.uniform(0.3, 0.42), rng.integers(3)
    if nose == 0:
        d.arc([cx - 8, ny - 10, cx + 8, ny + 4], 20, 160, line, 3)
    elif nose == 1:
        d.line([(cx, ny - 16), (cx - 5, ny), (cx + 3, ny + 1)], line, 3)
    else:
        d.ellipse([cx - 6, ny - 4, cx + 6, ny + 4], shade(skin, 0.8))
    if rng.random() < 0.3:  # blush
        for x in (cx - gap * 1.3, cx + gap * 1.3):
            d.ellipse([x - 10, ny - 6, x + 10, ny + 4], shade(skin, 0.92))

    # Facial hair sits under the mouth; the mouth is drawn over it.
    my = ny + (cy + ry - ny) * rng.uniform(0.35, 0.45)
    beard = rng.choice(5, p=[0.6, 0.1, 0.1, 0.1, 0.1])  # none, stubble, goatee, full, moustache
    if beard == 1:
        d.chord([cx - rx + 6, cy - ry * 0.2, cx + rx - 6, cy + ry - 3], 15, 165, shade(skin, 0.9))
    elif beard == 2:
        d.ellipse([cx - 18, my - 4, cx + 18, cy + ry + 6], hair, hl, 2)
    elif beard == 3:
        d.chord([cx - rx - 3, cy - ry * 0.5, cx + rx + 3, cy + ry + 12], 0, 180, hair, hl, 3)
    if beard in (2, 3, 4):
        d.polygon([(cx - 26, my - 2), (cx, my - 14), (cx + 26, my - 2), (cx, my - 6)], hair)
    mw, lips, mouth = rng.uniform(12, 22), shade(skin, 0.5), rng.integers(5)  # mw: half-width
    if mouth == 0:    # smile
        d.arc([cx - mw, my - 12, cx + mw, my + 8], 20, 160, lips, 4)
    elif mouth == 1:  # open smile, teeth showing
        d.chord([cx - mw, my - 10, cx + mw, my + 14], 0, 180, (120, 30, 40), lips, 2)
        d.chord([cx - mw + 4, my - 6, cx + mw - 4, my + 6], 0, 180, (255, 255, 255))
    elif mouth == 2:  # flat
        d.line([(cx - mw * 0.7, my), (cx + mw * 0.7, my)], lips, 4)
    elif mouth == 3:  # "o"
        d.ellipse([cx - 6, my - 6, cx + 6, my + 7], (120, 30, 40), lips, 2)
    else:             # smirk
        d.arc([cx - mw, my - 14, cx + mw, my + 6], 20, 110, lips, 4)

    # Glasses on top of everything.
    glasses = rng.choice(6, p=[0.55, 0.1, 0.1, 0.1, 0.1, 0.05])
    if glasses:
        frame, w, h = FRAMES[rng.integers(len(FRAMES))], er * 1.9, er * 1.6  # a lens' half-sizes
        fill = (30, 30, 40) if glasses == 3 else None  # 3 are sunglasses
        for x in (cx - gap, cx + gap):
            rect = [x - w, ey - h, x + w, ey + h]
            if glasses in (1, 3):
                d.ellipse(rect, fill, frame, 4)
            elif glasses in (2, 4):
                d.rounded_rectangle(rect, 2 if glasses == 2 else 7, fill, frame, 4)
            else:  # cat-eye: a wider, flatter frame
                d.chord([x - w - 3, ey - h - 3, x + w + 3, ey + h], 150, 390, fill, frame, 4)
        d.line([(cx - gap + w, ey - 2), (cx + gap - w, ey - 2)], frame, 4)
    return img, (len(HAIR) if style == 0 else hair_class)  # a bald head's colour shows little

def _draw(job):
    seed, i, size = job
    img, hair_class = draw_face(np.random.default_rng([seed, i]))
    return np.asarray(img.resize((size, size), Image.LANCZOS)), hair_class

def make(n, size=64, seed=0, workers=None, labels=False):
    """n cartoon faces as uint8 [n, size, size, 3]; face i depends only on (seed, i). labels=True:
    also each face's hair class, int64 [n], an index into HAIR_CLASSES."""
    jobs, faces = [(seed, i, size) for i in range(n)], []
    workers = workers or min(os.cpu_count() or 1, 16)
    if n < 1000 or workers == 1:
        faces = [_draw(j) for j in jobs]
    else:  # faces are independent, so a pool gives the same; spawn: the caller may hold threads
        with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn")) as pool:
            for face in pool.map(_draw, jobs, chunksize=64):
                faces.append(face)
                if len(faces) % 2500 == 0:  # thousands take a while on few cores
                    print(f"  drew {len(faces)}/{n} faces", flush=True)
    x = np.stack([f for f, _ in faces]) if n else np.zeros((0, size, size, 3), np.uint8)
    return (x, np.array([c for _, c in faces], np.int64)) if labels else x

def grid(images):
    """uint8 [n, h, w, 3] -> one uint8 image: the faces row by row, 2 px white gaps between."""
    n, h, w, _ = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    tiles = np.pad(images, ((0, -n % cols), (2, 0), (2, 0), (0, 0)), constant_values=255)
    rows = tiles.reshape(-1, cols, h + 2, w + 2, 3).swapaxes(1, 2).reshape(-1, cols * (w + 2), 3)
    return np.pad(rows, ((0, 2), (0, 2), (0, 0)), constant_values=255)

def writable_or_fail(path, flag):
    """Make path's folder and save a 1-pixel image beside path in its format, before any drawing."""
    test = "{}.write_test{}".format(*os.path.splitext(path))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        Image.new("RGB", (1, 1)).save(test)
        os.remove(test)
    except (KeyError, ValueError):  # Pillow has no writer for that extension
        sys.exit(f"cartoons.py: {flag} {path}: not an image name Pillow writes -- end it in .png")
    except OSError as e:
        sys.exit(f"cartoons.py: cannot write {path} ({e.strerror or e}) -- pass a writable {flag}")

if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Write cartoon faces as a grid or as a PNG folder.")
    p.add_argument("--n", type=int, help="how many faces (default 64 in a grid, 10000 in a folder)")
    p.add_argument("--size", type=int, default=64, help=f"face side in pixels, 8 to {MAX_SIZE}")
    p.add_argument("--seed", type=int, default=0, help="which faces (face i depends on seed and i)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", default="cartoons.png", help="where to write the grid (.png, .jpg)")
    where.add_argument("--png-folder", help="write the faces there as 000000.png, 000001.png, ...")
    p.error = lambda message: sys.exit(f"cartoons.py: {message} -- see python cartoons.py --help")
    a = p.parse_args()
    n = a.n if a.n is not None else 10_000 if a.png_folder else 64  # ddpm.py trains on 10,000
    for flag, value, ok, fix in [("--n", n, n >= 1, "1 or more"),
                                 ("--size", a.size, 8 <= a.size <= MAX_SIZE, f"8 to {MAX_SIZE}"),
                                 ("--seed", a.seed, a.seed >= 0, "0 or more")]:
        if not ok:
            sys.exit(f"cartoons.py: {flag} {value} is out of range -- pass {fix}")
    if a.png_folder:
        names = [f"{i:06d}.png" for i in range(n)]
        writable_or_fail(os.path.join(a.png_folder, names[0]), "--png-folder")
        if set(os.listdir(a.png_folder)) - set(names):
            sys.exit(f"cartoons.py: {a.png_folder} holds other files, which FID would read too -- "
                     "empty it or pass another --png-folder")
        print(f"drawing {n} faces, then writing them to {a.png_folder}", flush=True)
        for name, face in zip(names, make(n, a.size, a.seed)):
            Image.fromarray(face).save(os.path.join(a.png_folder, name))
    else:
        writable_or_fail(a.out, "--out")
        Image.fromarray(grid(make(n, a.size, a.seed))).save(a.out)
    print(f"wrote {a.png_folder or a.out} ({n} faces at {a.size}x{a.size}, seed {a.seed})")
