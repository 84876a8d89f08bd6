"""StyleGAN2 training throughput on this machine, to size the shipped world model.

For each width configuration and batch size it times real trainer steps
(G step + D step, with lazy R1 amortised over its 16-step interval; path
length regularisation off as in the default CPU recipe) and G_ema inference,
then prints images/s and hours per 100 kimg.

    .venv/bin/python bench/throughput_stylegan2.py                 # 64 and 128 px, batch 8 and 16
    .venv/bin/python bench/throughput_stylegan2.py --sizes 128 --batches 16 --threads 2 --steps 4

Wall-clock numbers depend on other load on the machine. The "img/CPU-s"
column divides by the process's CPU time instead; with --threads 1 it is
what one otherwise idle core would deliver, and is robust to contention.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from mm2latent.train.stylegan2 import StyleGAN2Trainer, TensorSource, TrainOptions  # noqa: E402

#: widths from 4 px upwards; the 128px configs list 6 values, 64px ones 5
CONFIGS = {
    128: {
        "xs": [128, 128, 128, 64, 32, 16],
        "s": [256, 256, 128, 64, 32, 16],
        "m": [256, 256, 256, 128, 64, 32],
        "l": [512, 512, 256, 128, 64, 32],
    },
    64: {
        "xs": [128, 128, 128, 64, 32],
        "s": [256, 256, 128, 64, 32],
        "m": [256, 256, 256, 128, 64],
        "l": [512, 512, 512, 256, 128],
    },
}


def bench(size: int, widths: list[int], batch: int, steps: int, w_dim: int, map_layers: int) -> dict:
    opts = TrainOptions(out=tempfile.mkdtemp(), size=size, batch=batch, kimg=1, z_dim=w_dim, w_dim=w_dim,
                        mapping_layers=map_layers, channels=widths, r1_every=16, pl_weight=0.0)
    data = TensorSource(torch.rand(max(64, batch), 3, size, size) * 2 - 1)
    t = StyleGAN2Trainer(opts, source=data)
    t.step = 1
    t.train_step()  # warm-up (allocations, oneDNN kernels)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        if t.step % 16 == 0:
            t.step += 1
        t.train_step()
    main, main_cpu = (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
    t.step = 16
    t0, c0 = time.perf_counter(), time.process_time()
    t.train_step()
    with_r1, with_r1_cpu = time.perf_counter() - t0, time.process_time() - c0
    per_step = main + max(with_r1 - main, 0.0) / 16
    per_step_cpu = main_cpu + max(with_r1_cpu - main_cpu, 0.0) / 16
    with torch.no_grad():
        z = torch.randn(batch, w_dim)
        t.G_ema(z, noise_mode="const")
        t0 = time.perf_counter()
        t.G_ema(z, noise_mode="const")
        gen = batch / (time.perf_counter() - t0)
    n_g = sum(p.numel() for p in t.G.parameters())
    n_d = sum(p.numel() for p in t.D.parameters())
    ips = batch / per_step
    return {"img_s": ips, "img_cpu_s": batch / per_step_cpu, "step_s": per_step, "gen_img_s": gen,
            "h_per_100kimg": 100_000 / ips / 3600, "G_M": n_g / 1e6, "D_M": n_d / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--configs", default="xs,s,m,l", help="names from CONFIGS")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--w-dim", type=int, default=512)
    ap.add_argument("--map-layers", type=int, default=8)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, "
          f"z=w={args.w_dim}, {args.map_layers} mapping layers, R1 every 16, no path-length reg")
    head = (f"{'size':>4} {'cfg':>3} {'widths (4px..)':<26} {'batch':>5} {'G M':>5} {'D M':>5} "
            f"{'step s':>7} {'train img/s':>11} {'img/CPU-s':>9} {'h/100kimg':>9} {'G_ema img/s':>11}")
    print(head)
    print("-" * len(head))
    for size in [int(s) for s in args.sizes.split(",")]:
        for name in args.configs.split(","):
            widths = CONFIGS[size][name]
            for batch in [int(b) for b in args.batches.split(",")]:
                r = bench(size, widths, batch, args.steps, args.w_dim, args.map_layers)
                print(f"{size:>4} {name:>3} {','.join(map(str, widths)):<26} {batch:>5} {r['G_M']:>5.1f} "
                      f"{r['D_M']:>5.1f} {r['step_s']:>7.2f} {r['img_s']:>11.1f} {r['img_cpu_s']:>9.1f} "
                      f"{r['h_per_100kimg']:>9.1f} "
                      f"{r['gen_img_s']:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
