#!/usr/bin/env python3
"""The reference's own code on tav's toy job, timed stage by stage (benches/peer_cpu.sh runs it
beside `tav run jobs/toy.toml --device flex` on the same cores).

The job is jobs/toy.toml's: tav's assets/toy-model and assets/toy-clip.gif (8 frames of 64²),
the same training prompt and three edits, tuning the reference's way (train_tuneavideo.py:
the attention queries and the temporal layers, AdamW, gradient clipping at 1.0, a constant
learning rate), DDIM inversion with the reference's `ddim_inversion`, then guided sampling
with diffusers' guidance rescale. The reference's modules are imported from its checkout
(showlab/Tune-A-Video, fetched separately; never copied into tav).

usage: peer_cpu.py --reference PATH/TO/Tune-A-Video [--steps 300] [--threads 2] [--out DIR]
Prints one JSON line per stage: {"impl": "reference", "stage": ..., "seconds": ...}.
Needs torch, diffusers==0.11.1, transformers==4.36.2, einops, imageio, safetensors.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

TAV = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_settings():
    """jobs/toy.toml's prompts and settings (the file is TOML; Python 3.11 reads it)."""
    import tomllib

    with open(os.path.join(TAV, "jobs", "toy.toml"), "rb") as f:
        return tomllib.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="a checkout of showlab/Tune-A-Video")
    ap.add_argument("--steps", type=int, help="tuning steps [default: the job file's]")
    ap.add_argument("--inversion-steps", type=int)
    ap.add_argument("--inference-steps", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the edits here as GIFs")
    args = ap.parse_args()

    job = job_settings()
    steps = args.steps if args.steps is not None else job["tune"]["steps"]
    inv_steps = args.inversion_steps or job["edit"]["inversion_steps"]
    edit_steps = args.inference_steps or job["edit"]["inference_steps"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(job["tune"]["seed"])
    sys.path.insert(0, args.reference)

    began = time.perf_counter()

    def report(stage, since, **extra):
        print(json.dumps({"impl": "reference", "stage": stage, "threads": args.threads,
                          "seconds": round(time.perf_counter() - since, 3), **extra}), flush=True)

    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer
    from tuneavideo.models.unet import UNet3DConditionModel
    try:
        import torchvision  # noqa: F401  (tuneavideo.util imports it for saving grids only)
    except ImportError:
        import types
        sys.modules["torchvision"] = types.ModuleType("torchvision")
    from tuneavideo.util import ddim_inversion
    import imageio

    since = time.perf_counter()
    model = os.path.join(TAV, "assets", "toy-model")
    # The reference inflates a 2D UNet's weights into its 3D UNet (its from_pretrained_2d);
    # the temporal layers keep their initial values.
    config = json.load(open(os.path.join(model, "unet", "config.json")))
    config["_class_name"] = "UNet3DConditionModel"
    for key in ("down_block_types", "up_block_types"):
        config[key] = [block.replace("2D", "3D") for block in config[key]]
    unet = UNet3DConditionModel.from_config(config)
    weights = load_file(os.path.join(model, "unet", "diffusion_pytorch_model.safetensors"))
    weights = {k: v.float() for k, v in weights.items()}
    weights.update({k: v for k, v in unet.state_dict().items() if "_temp." in k})
    unet.load_state_dict(weights)
    # diffusers 0.11 names the VAE's attention query/key/value/proj_attn (newer diffusers, and
    # tav, write to_q/to_k/to_v/to_out.0).
    vae_config = json.load(open(os.path.join(model, "vae", "config.json")))
    scale = vae_config.pop("scaling_factor", 0.18215)
    vae = AutoencoderKL.from_config(vae_config)
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    vae_weights = {}
    for k, v in load_file(os.path.join(model, "vae", "diffusion_pytorch_model.safetensors")).items():
        if ".attentions." in k:
            for new, old in renames.items():
                k = k.replace(new, old)
        vae_weights[k] = v.float()
    vae.load_state_dict(vae_weights)
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    ddpm = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    ddim = DDIMScheduler.from_pretrained(model, subfolder="scheduler")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    report("load", since)

    clip = job["clip"]
    gif = os.path.join(TAV, "jobs", clip["video"])
    frames = [np.asarray(f)[..., :3] for f in imageio.mimread(gif)]
    frames = frames[clip["start"]::clip["stride"]][: clip["frames"]]
    video = torch.tensor(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def embed(prompt):
        ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return text_encoder(ids)[0]

    since = time.perf_counter()
    with torch.no_grad():
        latents = vae.encode(video).latent_dist.sample() * scale
    latents = latents.permute(1, 0, 2, 3).unsqueeze(0)  # [1, C, F, h, w]
    context = embed(clip["prompt"])
    report("encode", since)

    unet.requires_grad_(False)
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_q", "attn_temp")):
            module.requires_grad_(True)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=job["tune"]["learning_rate"], betas=(0.9, 0.999),
                                  weight_decay=1e-2, eps=1e-8)
    since = time.perf_counter()
    unet.train()
    losses = []
    after_first = None  # tav's figure runs from its first step's end: the same here
    for step in range(steps):
        noise = torch.randn_like(latents)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (1,)).long()
        predicted = unet(ddpm.add_noise(latents, noise, t), t, context).sample
        loss = F.mse_loss(predicted.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
        if step == 0:
            after_first = time.perf_counter()
    unet.eval()
    after_first_s = time.perf_counter() - after_first if after_first is not None else 0.0
    report("tune", since, steps=steps,
           seconds_after_first_step=round(after_first_s, 3),
           seconds_per_step=round((time.perf_counter() - since) / max(steps, 1), 4),
           last_losses=round(sum(losses[-20:]) / max(len(losses[-20:]), 1), 5))

    class Pipeline:  # what ddim_inversion reads of a pipeline
        pass

    pipeline = Pipeline()
    pipeline.tokenizer, pipeline.text_encoder, pipeline.unet = tokenizer, text_encoder, unet
    pipeline.device = torch.device("cpu")
    since = time.perf_counter()
    ddim.set_timesteps(inv_steps)
    with torch.no_grad():
        inverted = ddim_inversion(pipeline, ddim, video_latent=latents, num_inv_steps=inv_steps, prompt="")[-1]
    report("invert", since, steps=inv_steps)

    guidance = job["edit"]["guidance"]
    rescale = job["edit"].get("guidance_rescale", 0.0)
    uncond = embed("")
    since = time.perf_counter()
    edits = []
    for prompt in job["edit"]["prompts"]:
        contexts = torch.cat([uncond, embed(prompt)])
        ddim.set_timesteps(edit_steps)
        x = inverted.clone()
        with torch.no_grad():
            for t in ddim.timesteps:
                eps_uncond, eps_cond = unet(torch.cat([x, x]), t, contexts).sample.chunk(2)
                guided = eps_uncond + guidance * (eps_cond - eps_uncond)
                if rescale > 0:  # diffusers' rescale_noise_cfg
                    dims = list(range(1, guided.ndim))
                    rescaled = guided * (eps_cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
                    guided = rescale * rescaled + (1 - rescale) * guided
                x = ddim.step(guided, t, x).prev_sample
            pixels = vae.decode((x / scale)[0].permute(1, 0, 2, 3)).sample
        edits.append(((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    report("edit", since, edits=len(edits), steps=edit_steps)
    report("total", began)

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for i, (prompt, video_out) in enumerate(zip(job["edit"]["prompts"], edits)):
            name = f"{i + 1:02}-{prompt.replace(' ', '-')[:40]}.gif"
            imageio.mimsave(os.path.join(args.out, name), list(video_out), duration=0.125)


if __name__ == "__main__":
    main()
