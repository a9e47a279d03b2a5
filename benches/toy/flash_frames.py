"""Counts flash frames in `tav run` output folders: frames of an edit that are not the scene.

    python benches/toy/flash_frames.py OUT [OUT...]

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


def main():
    for folder in sys.argv[1:]:
        total, gifs = 0, sorted(glob.glob(os.path.join(folder, "0*.gif")))
        if not gifs:
            sys.exit(f"{folder}: no edited videos (0*.gif) to check; is it a `tav run` output folder?")
        for gif in gifs:
            video = frames(gif)
            median = np.median(video, 0)
            away = np.abs(video - median).mean((1, 2, 3))
            brighter = np.array([border(f) for f in video]) - border(median)
            flash = np.nonzero((away > 25) | (brighter > 40))[0]
            total += len(flash)
            print(f"  {os.path.basename(gif)}: flash frames {list(map(int, flash))}, "
                  f"distance from the median {np.round(away).astype(int).tolist()}")
        print(f"{folder}: {total} flash frames")


if __name__ == "__main__":
    main()
