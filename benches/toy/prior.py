"""What a toy model's UNet knows at each noise level, read through diffusers (a tav-written
model folder loads there as it is).

    python benches/toy/prior.py MODEL [--tav target/debug/tav] [--samples 32] [--png OUT.png]

1. Clean-sample error by timestep: frame 3 of 48 generated clips (seeds 5000+, `tav toy-clip`),
   noised at t, and the mean squared error of the x0 the UNet's output implies, with the clip's
   caption, the empty one, and the caption with another background. At the noisy end an
   epsilon model's error is magnified 1/sqrt(SNR) times: above the latents' variance (about 1),
   the model's first sampling steps aim at a frame worse than the average one.
2. Text-to-image from noise with the main command's three edit prompts (DDIM 25 steps,
   guidance 4, rescale 0.7, as jobs/toy.toml): how many frames miss their prompt (no object of
   the named colour, a background of the wrong kind, or the bright bordered frame a textureless
   latent decodes to).
3. With `--inversion`: 16 of those frames DDIM-inverted in 20 steps with the empty prompt, as
   Tune-A-Video inverts a clip, then sampled back with their captions: the latents' MSE against
   the originals, with the UNet told the next timestep (Tune-A-Video's `next_step`) and the
   sample's own (diffusers' DDIMInverseScheduler).
Needs torch, diffusers and transformers. Seeds are fixed: the numbers repeat.
"""
import argparse, os, subprocess, tempfile

import numpy as np
import torch
from PIL import Image
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

PROMPTS = ["a blue circle is moving on the road", "a red circle is moving on the grass",
           "a red square is moving on the road"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tav", default="target/debug/tav")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--png")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--inversion", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = a.model
    unet = UNet2DConditionModel.from_pretrained(m, subfolder="unet").float().eval()
    vae = AutoencoderKL.from_pretrained(m, subfolder="vae").float().eval()
    te = CLIPTextModel.from_pretrained(m, subfolder="text_encoder").float().eval()
    tok = CLIPTokenizer.from_pretrained(m, subfolder="tokenizer")
    sch = DDIMScheduler.from_pretrained(m, subfolder="scheduler")
    sf = vae.config.scaling_factor
    velocity = sch.config.prediction_type == "v_prediction"
    ab = sch.alphas_cumprod

    def emb(p):
        return te(tok(p, padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]

    def noise_of(out, x, t):
        return ab[t].sqrt() * out + (1 - ab[t]).sqrt() * x if velocity else out

    frames, captions = [], []
    with tempfile.TemporaryDirectory() as d:
        for seed in range(5000, 5048):
            gif = os.path.join(d, f"{seed}.gif")
            caption = subprocess.run([a.tav, "toy-clip", gif, "--seed", str(seed)], check=True,
                                     capture_output=True, text=True).stdout.strip()
            im = Image.open(gif)
            im.seek(3)
            frames.append(np.array(im.convert("RGB")))
            captions.append(caption)
    x = torch.tensor(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    swap = {"road": "snow", "snow": "grass", "grass": "beach", "beach": "road"}
    wrong = [c.rsplit(" ", 1)[0] + " " + swap[c.rsplit(" ", 1)[1]] for c in captions]
    print(f"{m}: {sch.config.prediction_type}")
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * sf
        print(f"latents: variance {z.var().item():.3f}")
        ctx = {"caption": emb(captions), "empty": emb([""] * len(captions)), "other background": emb(wrong)}
        print("clean-sample error (MSE of the implied x0) by timestep:")
        print("   t  " + "  ".join(f"{k:>16}" for k in ctx))
        for t in [999, 950, 900, 800, 700, 500, 300, 100, 20]:
            n = torch.randn_like(z)
            xt = ab[t].sqrt() * z + (1 - ab[t]).sqrt() * n
            errs = []
            for c in ctx.values():
                eps = noise_of(unet(xt, t, encoder_hidden_states=c).sample, xt, t)
                x0 = (xt - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
                errs.append(((x0 - z) ** 2).mean().item())
            print(f"{t:>4}  " + "  ".join(f"{e:>16.3f}" for e in errs))

        if a.inversion:
            for told in ["next", "own"]:
                err = inverted_and_back(unet, sch, z[:16], ctx["empty"][:16], ctx["caption"][:16],
                                        noise_of, told)
                print(f"inverted (UNet told the {told} timestep) and sampled back: latent MSE {err:.4f}")

        g = torch.Generator().manual_seed(0)
        unc = emb([""])
        rows, total = [], 0
        for p in PROMPTS:
            n = a.samples
            xs = torch.randn(n, 4, z.shape[2], z.shape[3], generator=g)
            sch.set_timesteps(25)
            both = torch.cat([unc.expand(n, -1, -1), emb([p]).expand(n, -1, -1)])
            for t in sch.timesteps:
                u, c = unet(torch.cat([xs, xs]), t, encoder_hidden_states=both).sample.chunk(2)
                guided = u + 4.0 * (c - u)
                # guidance rescale 0.7 (Lin et al.), as tav and diffusers do it
                guided = 0.7 * guided * (c.std(dim=(1, 2, 3), keepdim=True)
                                         / guided.std(dim=(1, 2, 3), keepdim=True)) + 0.3 * guided
                xs = sch.step(guided, t, xs).prev_sample
            im = ((vae.decode(xs / sf).sample.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
            missed = sum(misses(i, p) for i in im)
            total += missed
            print(f"from noise, '{p}': {missed} of {n} frames miss it")
            rows.append(np.concatenate(list(im[:16].astype(np.uint8)), 1))
        print(f"from noise: {total} of {len(PROMPTS) * a.samples} frames miss their prompt")
        if a.png:
            Image.fromarray(np.concatenate(rows, 0)).save(a.png)


def inverted_and_back(unet, sch, z, empty, caption, noise_of, told, steps=20):
    ab = sch.alphas_cumprod
    ratio = len(ab) // steps
    timesteps = [i * ratio + sch.config.steps_offset for i in range(steps)]

    def alpha(t):
        return ab[t] if t >= 0 else ab[0]

    x = z.clone()
    for t in timesteps:
        current = min(t - ratio, len(ab) - 1)
        t_model = t if told == "next" else max(current, 0)
        out = unet(x, t_model, encoder_hidden_states=empty).sample
        a0, a1 = alpha(current), alpha(t)
        eps = a0.sqrt() * out + (1 - a0).sqrt() * x if sch.config.prediction_type == "v_prediction" else out
        x0 = (x - (1 - a0).sqrt() * eps) / a0.sqrt()
        x = a1.sqrt() * x0 + (1 - a1).sqrt() * eps
    for t in reversed(timesteps):
        a0, a1 = alpha(t), alpha(t - ratio)
        out = unet(x, t, encoder_hidden_states=caption).sample
        eps = noise_of(out, x, t)
        x0 = (x - (1 - a0).sqrt() * eps) / a0.sqrt()
        x = a1.sqrt() * x0 + (1 - a1).sqrt() * eps
    return ((x - z) ** 2).mean().item()


def misses(img, prompt):
    """The frame lacks what its prompt names, or is the bright frame of a textureless latent."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    blue = ((b > r + 40) & (b > g + 40)).mean()
    red = ((r > g + 40) & (r > b + 40)).mean()
    green = ((g > r + 20) & (g > b + 20)).mean()
    bright = ((r > 200) & (g > 200) & (b > 200)).mean()
    if "blue" in prompt:
        return blue < 0.02 or bright > 0.15
    if "grass" in prompt:
        return green < 0.5 or bright > 0.15
    return green > 0.3 or red < 0.02 or bright > 0.15


if __name__ == "__main__":
    main()
