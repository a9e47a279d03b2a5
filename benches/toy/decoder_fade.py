"""How a toy model's VAE decoder draws faded latents: each frame encoded, its latent's deviation
from its per-channel mean scaled by a factor (1: as encoded, 0: flat), decoded, and the mean
squared error against the frame printed per factor.

    python benches/toy/decoder_fade.py MODEL[,MODEL...] CLIP.gif [CLIP.gif...]

Needs diffusers (tav's folders load there as they are). A flash frame is what the committed
decoder draws from a latent faded to about 0.4 (docs/toy-world.md, "Flash frames are faded
latents"); `tav pretrain --decoder-contrast-from` trains a decoder on such latents. Clips:
`tav toy-clip --seed N OUT.gif`. `--png DIR` also writes each model's decodes as one image
(rows: the frames, then each factor).
"""
import os, sys

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from flash_frames import frames  # same folder: a GIF's frames as an array

FACTORS = (1.0, 0.6, 0.4, 0.3, 0.2, 0.1, 0.0)


def main():
    args = sys.argv[1:]
    png = None
    if "--png" in args:
        at = args.index("--png")
        png = args[at + 1]
        del args[at : at + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    models, clips = args[0].split(","), args[1:]
    pixels = np.concatenate([frames(c) for c in clips]).astype(np.float32)
    x = torch.tensor(pixels).permute(0, 3, 1, 2) / 127.5 - 1
    print(f"{len(x)} frames; reconstruction MSE (pixels in -1..1) at latent contrast " + ", ".join(map(str, FACTORS)))
    for model in models:
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae").float().eval()
        rows = [pixels[:8]]
        errors = []
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            means = z.mean(dim=(2, 3), keepdim=True)
            for f in FACTORS:
                y = vae.decode(means + f * (z - means)).sample.clamp(-1, 1)
                errors.append(float(((y - x) ** 2).mean()))
                rows.append(((y[:8] + 1) * 127.5).permute(0, 2, 3, 1).numpy())
        print(f"{model}: " + " ".join(f"{e:.4f}" for e in errors))
        if png:
            os.makedirs(png, exist_ok=True)
            grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
            name = os.path.basename(os.path.normpath(model)) + ".png"
            Image.fromarray(grid.astype(np.uint8)).save(os.path.join(png, name))


if __name__ == "__main__":
    main()
