"""`collect`, the rollout half of an image epoch: sample this process's share of the epoch's
images (scoring each batch in a thread as it is done), gather the rewards of every process in
global order, and the epoch's reward metrics. Rollout algorithms call it through their Context;
offline and self-sampling algorithms never do."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from ..algorithms import Collected, EpochRewards, Rollouts
from ..models.policy import guided_prediction
from ..rewards import score
from ..sampling import rollout


class Collector:
    def __init__(self, cfg, policy, sampler, cond_table, uncond, reward, accelerator, *, plan, prompts_of,
                 train_prompts: list[str], generator, gather, on_nonfinite: Callable[[str], Exception],
                 any_process: Callable[[bool], bool]):
        self.cfg, self.policy, self.sampler, self.reward = cfg, policy, sampler, reward
        self.cond_table, self.uncond, self.accelerator = cond_table, uncond, accelerator
        self.plan, self.prompts_of, self.train_prompts = plan, prompts_of, train_prompts
        self.generator, self.gather, self.on_nonfinite, self.any_process = generator, gather, on_nonfinite, any_process
        self.pool = ThreadPoolExecutor(max_workers=1)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def __call__(self, epoch: int, *, sampling_weights=None, with_graph: bool = False, observe=None,
                 model_time=None) -> Collected:
        """The epoch's rollouts on this process, every process's rewards and the reward metrics.
        `sampling_weights()` is a context of the weights to sample with; with `with_graph` the
        log-probs keep their graph; `observe(images, prompts, global_idx)` sees each batch;
        `model_time(t)` is the time the network is fed instead of the sampler's t. A
        batch with non-finite images or log-probs stops the run on every process."""
        cfg = self.cfg
        t0 = time.perf_counter()
        with tqdm(total=cfg.sample.num_batches_per_epoch * cfg.sample.num_steps, unit="step", leave=False,
                  desc=f"epoch {epoch + 1}/{cfg.run.epochs} sampling", disable=not self.accelerator.is_main_process) as bar:
            ro, futures, bad = self._sample(epoch, bar, sampling_weights, with_graph, observe, model_time)
        if self.any_process(bad > 0):
            where = f"in sampling batch {bad}" if bad else "on another process"
            raise self.on_nonfinite(f"decoded images or log-probs {where}")
        t1 = time.perf_counter()
        results = [f.result() for f in futures]
        rewards = torch.cat([r[0] for r in results])
        t2 = time.perf_counter()
        # every process sees all rewards in global order, so signals and buffers agree everywhere
        g_rewards, g_pids = self.gather(rewards), self.gather(ro.prompt_ids)
        metrics = reward_metrics(self.accelerator, self.reward, cfg.reward.name, g_rewards, g_pids, results)
        batch = EpochRewards(g_rewards, g_pids, [self.train_prompts[i] for i in g_pids],
                             torch.arange(len(g_rewards)) // cfg.sample.images_per_prompt)
        ro.latents = ro.latents.to(self.accelerator.device)
        return Collected(ro, batch, metrics | {"perf/sample_s": t1 - t0, "perf/reward_s": t2 - t1})

    def _sample(self, epoch: int, bar, sampling_weights, with_graph: bool, observe, model_time
                ) -> tuple[Rollouts | None, list[Future], int]:
        """(rollouts, reward futures, 0), or (None, futures, the 1-based batch that went non-finite)."""
        cfg, policy = self.cfg, self.policy
        fed = model_time or (lambda t: t)
        gidx, pids = self.plan(epoch)
        latents, log_probs, graphs, futures = [], [], [], []
        for start in range(0, len(gidx), cfg.sample.batch_size):
            sl = slice(start, start + cfg.sample.batch_size)
            gens = [self.generator(epoch, int(i), purpose="noise") for i in gidx[sl]]

            def noise(gens=gens):
                return torch.stack([torch.randn(policy.latent_shape, generator=g) for g in gens])

            cond = self.cond_table[pids[sl]]
            uncond = self.uncond.repeat(len(cond))
            x_T = noise().to(self.accelerator.device)
            weights = sampling_weights() if sampling_weights is not None else contextlib.nullcontext()
            with torch.set_grad_enabled(with_graph), self.accelerator.autocast(), weights:
                traj = rollout(lambda x, t: guided_prediction(policy, x, fed(t), cond, uncond, cfg.sample.guidance_scale),
                               x_T, self.sampler, noise=noise, on_step=lambda: bar.update(1))
            with torch.no_grad():
                images = policy.decode(traj.final).cpu()
            if not (bool(torch.isfinite(images).all()) and bool(torch.isfinite(traj.log_probs).all())):
                return None, futures, start // cfg.sample.batch_size + 1
            prompts, meta = self.prompts_of(pids[sl])
            if cfg.reward.asynchronous:
                futures.append(self.pool.submit(score, self.reward, images, prompts, meta))
            else:
                f: Future = Future()
                f.set_result(score(self.reward, images, prompts, meta))
                futures.append(f)
            if observe is not None:
                observe(images, prompts, gidx[sl])
            latents.append(traj.latents if with_graph else traj.latents.cpu())
            log_probs.append(traj.log_probs.detach())
            if with_graph:
                graphs.append(traj.log_probs)
        return Rollouts(torch.cat(latents), torch.cat(log_probs), pids, gidx, graphs), futures, 0


def reward_metrics(accelerator, reward, name: str, rewards: Tensor, pids: Tensor, results) -> dict[str, float]:
    """An epoch's reward statistics: mean and std, the verifier's accuracy and each component's mean
    (these from every process), and the spread of rewards within prompts seen more than once."""
    m = {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std(unbiased=False)),
         f"reward/{name}/mean": float(rewards.mean()), f"reward/{name}/std": float(rewards.std(unbiased=False))}
    # the verifier's binary verdict (alone, or as a weighted-sum component), this process's share
    key = next((k for k in results[0][1] if k == "correct" or k.endswith("/correct")), None)
    if key is not None and all(key in r[1] for r in results):
        correct = torch.tensor([float(c) for r in results for c in r[1][key]])
        m["reward/accuracy"] = float(accelerator.gather(correct.to(accelerator.device)).mean())
    for c in getattr(reward, "components", ()):  # weighted sums and routes log each part
        vals = [v for r in results for v in r[1][f"component/{c}"] if v is not None]
        sc = accelerator.reduce(torch.tensor([sum(vals), len(vals)], dtype=torch.float64,
                                             device=accelerator.device), "sum")
        if sc[1] > 0:
            m[f"reward/{c}/mean"] = float(sc[0] / sc[1])
    # spread of rewards within prompts seen more than once this epoch
    stds = [float(rewards[pids == p].std(unbiased=False)) for p in pids.unique() if (pids == p).sum() > 1]
    if stds:
        m["prompts/within_prompt_std"] = sum(stds) / len(stds)
    return m
