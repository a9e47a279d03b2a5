#!/usr/bin/env python3
"""The reference's steps timed with PyTorch, to set beside `tav bench`.

Times Tune-A-Video's own 3D UNet (UNet3DConditionModel from the reference repository) at SD
v1.5 sizes with random weights, its attention running on
torch.nn.functional.scaled_dot_product_attention, for the same three steps as `tav bench`:
a UNet forward, a tuning step (forward, backward into the trainable layers, AdamW) and a
sampling step with classifier-free guidance (batch of 2). Prints one JSON line per step
with the same fields as `tav bench` (median_ms, peak_bytes = torch.cuda.max_memory_allocated).

Setup (a CUDA GPU):
    git clone https://github.com/showlab/Tune-A-Video
    pip install torch diffusers==0.11.1 transformers einops
    python benches/pytorch_reference.py --reference ./Tune-A-Video --frames 8 --size 512 --f16

--config tiny --device cpu runs the same code on tav's demo model on the CPU (the GPU check's dry
run, benches/gpu/run.sh --dry-run). --steps attention times scaled_dot_product_attention alone
on tav's `bench --kernel attention` shapes (--tokens, --heads, --head-dim, --frames; no
--reference needed).

--f16 matches the reference's fp16 mixed precision: frozen weights in f16, trainable weights
in f32, autocast to f16. --gradient-checkpointing is the reference's training default.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SD15_UNET = {
    "_class_name": "UNet3DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}
# tav's demo model (`tav bench --config tiny`), for a dry run of the same code on the CPU.
TINY_UNET = dict(SD15_UNET, attention_head_dim=4, block_out_channels=[32, 64, 64, 64],
                 cross_attention_dim=32, sample_size=16)
CONFIGS = {"sd15": SD15_UNET, "tiny": TINY_UNET}
TRAINABLE = ("attn1.to_q", "attn2.to_q", "attn_temp")


def use_sdpa():
    """Routes the reference's attention (diffusers 0.11 CrossAttention._attention, which its
    SparseCausalAttention and temporal attention call) through PyTorch's fused SDPA."""
    from diffusers.models.attention import CrossAttention

    def attention(self, query, key, value, attention_mask=None):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        return self.reshape_batch_dim_to_heads(out)

    CrossAttention._attention = attention


def build(args):
    sys.path.insert(0, args.reference)
    use_sdpa()
    from tuneavideo.models.unet import UNet3DConditionModel

    unet = UNet3DConditionModel.from_config(CONFIGS[args.config]).to(args.device)
    if args.f16:
        unet.half()
    trainable = []
    for name, p in unet.named_parameters():
        learn = any(t in name for t in TRAINABLE)
        p.requires_grad_(learn)
        if learn:
            p.data = p.data.float()
            trainable.append(p)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet, trainable


def measure(once, runs, device):
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    once()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    if not cuda:
        return times, None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    once()
    sync()
    return times, torch.cuda.max_memory_allocated()


def attention_bench(args):
    """scaled_dot_product_attention alone on tav's `bench --kernel attention` shapes:
    sparse-causal (each frame's queries over frame 0's and the previous frame's keys) and
    temporal (each token's frames over each other), forward and forward + backward."""
    dtype = torch.float16 if args.f16 else torch.float32
    f, n, h, d = args.frames, args.tokens, args.heads, args.head_dim
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"

    def make(*shape):
        return torch.randn(*shape, device=args.device, dtype=dtype, requires_grad=True)

    shapes = {
        # [frames·heads, tokens, d] queries over [frames·heads, 2·tokens, d] keys.
        "sparse-causal": ((f * h, n, d), (f * h, 2 * n, d)),
        # [tokens·heads, frames, d] over the same.
        "temporal": ((n * h, f, d), (n * h, f, d)),
    }
    for mode, (qs, ks) in shapes.items():
        q, k, v = make(*qs), make(*ks), make(*ks)
        grad = torch.randn(*qs, device=args.device, dtype=dtype)

        def forward():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v)

        def backward():
            out = F.scaled_dot_product_attention(q, k, v)
            out.backward(grad)

        for pass_name, once in (("forward", forward), ("forward+backward", backward)):
            times, peak = measure(once, args.runs, args.device)
            print(json.dumps({"bench": "attention", "mode": mode, "pass": pass_name,
                              "device": name, "impl": "pytorch-sdpa", "frames": f,
                              "tokens": n, "heads": h, "head_dim": d, "f16": args.f16,
                              "median_ms": statistics.median(times), "min_ms": min(times),
                              "runs": len(times), "peak_bytes": peak}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="a checkout of showlab/Tune-A-Video (not needed for --steps attention)")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="sd15")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=4096, help="--steps attention: tokens per frame")
    ap.add_argument("--heads", type=int, default=8, help="--steps attention")
    ap.add_argument("--head-dim", type=int, default=40, help="--steps attention")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--f16", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--steps", default="forward,tune,sample")
    args = ap.parse_args()
    if args.steps == "attention":
        attention_bench(args)
        return
    if not args.reference:
        ap.error("--reference is needed for the UNet's steps")

    unet, trainable = build(args)
    side = args.size // 8
    dtype = torch.float16 if args.f16 else torch.float32
    cuda = args.device == "cuda"
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    autocast = torch.autocast(args.device, dtype=torch.float16 if cuda else torch.bfloat16,
                              enabled=args.f16)
    optimizer = torch.optim.AdamW(trainable, lr=3e-5, weight_decay=1e-2)

    def latents(batch):
        return torch.randn(batch, 4, args.frames, side, side, device=args.device, dtype=dtype)

    width = CONFIGS[args.config]["cross_attention_dim"]

    def context(batch):
        return torch.randn(batch, 77, width, device=args.device, dtype=dtype)

    t = torch.tensor([500], device=args.device)

    def forward():
        with torch.no_grad(), autocast:
            unet(latents(1), t, context(1)).sample

    def tune():
        unet.train()
        noise = latents(1)
        with autocast:
            pred = unet(latents(1), t, context(1)).sample
            loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        unet.eval()

    def sample():
        with torch.no_grad(), autocast:
            x = latents(1)
            eps = unet(torch.cat([x, x]), t, torch.cat([context(1), context(1)])).sample
            uncond, cond = eps.chunk(2)
            (uncond + 12.5 * (cond - uncond)).float()

    steps = {"forward": forward, "tune": tune, "sample": sample}
    params = sum(p.numel() for p in unet.parameters())
    print(json.dumps({"bench": "setup", "device": device_name, "impl": "pytorch-sdpa",
                      "torch": torch.__version__, "parameters": params, "frames": args.frames,
                      "size": args.size, "f16": args.f16,
                      "gradient_checkpointing": args.gradient_checkpointing}))
    for name in args.steps.split(","):
        times, peak = measure(steps[name], args.runs, args.device)
        print(json.dumps({"bench": name, "device": device_name, "impl": "pytorch-sdpa",
                          "config": args.config,
                          "frames": args.frames, "size": args.size, "f16": args.f16,
                          "median_ms": statistics.median(times), "min_ms": min(times),
                          "runs": len(times), "peak_bytes": peak,
                          "peak_gib": peak / 2**30 if peak is not None else None}),
              flush=True)


if __name__ == "__main__":
    main()
