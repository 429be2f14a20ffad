"""Where a DDPO epoch's time goes: torch.profiler over one epoch, and the CPU attention kernels.

    python benchmarks/ddpo_profile.py [--mode rescore1|rescore4|single] [--rows 25]

The epoch is ddpo_epoch.py's (16 samples x 20 steps on shapes-sd, LoRA r4, guidance 5): two
epochs of warm-up, then the third under the profiler; the table lists operators by their own
CPU time. Then a guided-size UNet batch (32 latents) forward, and forward with backward, with
scaled-dot-product attention forced to the flash kernel and to the math kernel. Results:
benchmarks/results/ddpo_epoch.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ddpo_epoch import ddrl_config, run_ddrl

MODES = {"rescore1": {"train.single_pass": False, "train.timesteps_per_forward": 1},
         "rescore4": {"train.single_pass": False, "train.timesteps_per_forward": 4},
         "single": {"train.single_pass": True}}


def attention_kernels(tr, batch: int = 32, repeats: int = 4) -> None:
    unet, policy = tr.policy.denoiser, tr.policy
    x, t = torch.randn(batch, *policy.latent_shape), torch.full((batch,), 500)
    emb = tr.cond_table[torch.arange(batch) % len(tr.cond_table)]
    for grad in (False, True):
        for kernel in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
            times = []
            with sdpa_kernel(kernel):
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    if grad:
                        policy.predict(x, t, emb).float().mean().backward()
                    else:
                        with torch.no_grad():
                            policy.predict(x, t, emb)
                    times.append(time.perf_counter() - t0)
            tr.optimizer.zero_grad(set_to_none=True)
            print(f"{'forward+backward' if grad else 'forward':<17} {kernel.name:<16} {min(times[1:]) * 1000:7.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=MODES, default="rescore1")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    from ddrl.cli import quiet_libraries

    quiet_libraries()
    rows, tr = run_ddrl(ddrl_config(16, 20, **MODES[args.mode]), 2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        r = tr.run_epoch(2)
    print(f"{args.mode}: profiled epoch sample {r['perf/sample_s']:.2f} s, train {r['perf/train_s']:.2f} s "
          f"(torch threads {torch.get_num_threads()})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    attention_kernels(tr)


if __name__ == "__main__":
    main()
