"""Counts flash frames in `tav run` output folders: frames of an edit that are not the scene.

    python benches/toy/flash_frames.py OUT [OUT...]
    python benches/toy/flash_frames.py SCORE_OUT/videos/*.gif   # grids: source, then edits

A GIF argument is a grid (`tav score`'s `videos/SEED-METHOD.gif`, `tav run`'s `grid.gif`):
square panels left to right with a 4-pixel gap, the source first; every other panel is an edit.

A frame is a flash when it differs from its edit's per-pixel median frame by over 25 of 255
on average (the object moves, so a scene's frames stay well under it; a striped frame is 50 to
100 away), or when its 3-pixel border is over 40 brighter than the median's (the white border
a textureless latent decodes to). Prints each edit's flash frames and the total per folder.
"""
import glob, os, sys

import numpy as np
from PIL import Image


def frames(path):
    im, out = Image.open(path), []
    try:
        while True:
            out.append(np.array(im.convert("RGB")).astype(float))
            im.seek(im.tell() + 1)
    except EOFError:
        pass
    return np.stack(out)


def border(frame):
    return np.concatenate([frame[:3].reshape(-1, 3), frame[-3:].reshape(-1, 3),
                           frame[:, :3].reshape(-1, 3), frame[:, -3:].reshape(-1, 3)]).mean()


GRID_GAP = 4  # native/src/video/layout.rs


def count(name, video):
    median = np.median(video, 0)
    away = np.abs(video - median).mean((1, 2, 3))
    brighter = np.array([border(f) for f in video]) - border(median)
    flash = np.nonzero((away > 25) | (brighter > 40))[0]
    print(f"  {name}: flash frames {list(map(int, flash))}, "
          f"distance from the median {np.round(away).astype(int).tolist()}")
    return len(flash)


def main():
    grand = 0
    for path in sys.argv[1:]:
        total = 0
        if path.endswith(".gif"):
            video = frames(path)
            side = video.shape[1]
            panels = (video.shape[2] + GRID_GAP) // (side + GRID_GAP)
            if panels < 2 or panels * (side + GRID_GAP) - GRID_GAP != video.shape[2]:
                sys.exit(f"{path}: not a grid of square panels with {GRID_GAP}-pixel gaps")
            for k in range(1, panels):
                x = k * (side + GRID_GAP)
                total += count(f"edit {k}", video[:, :, x:x + side])
        else:
            gifs = sorted(glob.glob(os.path.join(path, "0*.gif")))
            if not gifs:
                sys.exit(f"{path}: no edited videos (0*.gif) to check; is it a `tav run` output folder?")
            for gif in gifs:
                total += count(os.path.basename(gif), frames(gif))
        print(f"{path}: {total} flash frames")
        grand += total
    if len(sys.argv) > 2:
        print(f"all: {grand} flash frames")


if __name__ == "__main__":
    main()
