"""PPO for the router over a cached rollout table (no LLM calls during training).

An episode is one training query: five decisions, one per module in pipeline order. The
state of module m is (query embedding, embedding of the memory m reads: the retrieved chunks
for Filter, the Filter's output at the tier just chosen for every later module). The reward
is terminal, undiscounted, and shared by the five decisions. Clip 0.2, lr 3e-4, 4 epochs per
batch, as in BudgetMem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from agentkd.errors import ConfigError
from agentkd.memory.config import MODULES, TIERS
from agentkd.memory.rollouts import QueryOutcomes, Reward
from agentkd.memory.router import Router, RouterNet


@dataclass
class PPOConfig:
    iterations: int = 150
    batch_episodes: int = 64
    epochs: int = 4
    minibatch: int = 128
    lr: float = 3e-4
    clip: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    max_grad_norm: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_episodes < 1 or self.epochs < 1:
            raise ConfigError("PPO iterations, batch_episodes and epochs must be >= 1")


@dataclass
class PPOHistory:
    mean_reward: list[float] = field(default_factory=list)
    greedy_reward: list[float] = field(default_factory=list)


class CachedEnv:
    """Tensors of the table, so a batch of episodes is a handful of tensor ops."""

    def __init__(self, table: list[QueryOutcomes], reward: Reward) -> None:
        self.table, self.reward = table, reward
        self.query = torch.from_numpy(np.stack([q.query_vec for q in table])).float()
        self.memory = torch.from_numpy(np.stack([q.memory_vecs for q in table])).float()

    def memory_for(self, idx: torch.Tensor, step: int, filter_tier: torch.Tensor) -> torch.Tensor:
        if step == 0:
            return self.memory[idx, 0]
        return self.memory[idx, 1 + filter_tier]

    def rewards(self, idx: np.ndarray, tiers: np.ndarray) -> np.ndarray:
        out = np.empty(len(idx))
        for j, (i, t) in enumerate(zip(idx, tiers, strict=True)):
            q = self.table[int(i)]
            out[j] = float(self.reward(q.combo_score(t), q.combo_cost(t)))
        return out

    def rollout(self, net: RouterNet, idx: torch.Tensor, greedy: bool,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Walk the modules in order for a batch of queries; returns per-step tensors."""
        n = len(idx)
        tiers = torch.zeros(n, len(MODULES), dtype=torch.long)
        logps = torch.zeros(n, len(MODULES))
        values = torch.zeros(n, len(MODULES))
        mems = torch.zeros(n, len(MODULES), self.memory.shape[-1])
        with torch.no_grad():
            for step in range(len(MODULES)):
                mem = self.memory_for(idx, step, tiers[:, 0])
                logits, value = net(self.query[idx], mem, torch.full((n,), step))
                dist = torch.distributions.Categorical(logits=logits)
                action = logits.argmax(-1) if greedy else torch.multinomial(
                    dist.probs, 1, generator=generator).squeeze(-1)
                tiers[:, step], logps[:, step] = action, dist.log_prob(action)
                values[:, step], mems[:, step] = value, mem
        return {"tiers": tiers, "logp": logps, "value": values, "memory": mems}


def train_router(table: list[QueryOutcomes], reward: Reward, config: PPOConfig | None = None,
                 router: Router | None = None,
                 progress: Callable[[int, float], None] | None = None) -> tuple[Router, PPOHistory]:
    """Train (or continue training) a router with PPO over the cached table."""
    cfg = config or PPOConfig()
    threads = torch.get_num_threads()
    # A 256-wide MLP gains nothing from intra-op threads, and on a busy 2-core machine their
    # spin-waiting makes training many times slower.
    torch.set_num_threads(1)
    try:
        return _train(table, reward, cfg, router, progress)
    finally:
        torch.set_num_threads(threads)


def _train(table: list[QueryOutcomes], reward: Reward, cfg: PPOConfig, router: Router | None,
           progress: Callable[[int, float], None] | None) -> tuple[Router, PPOHistory]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dim = int(table[0].query_vec.shape[0])
    net = router.net if router is not None else RouterNet(embed_dim=dim)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    env = CachedEnv(table, reward)
    history = PPOHistory()
    all_idx = torch.arange(len(table))
    n_modules = len(MODULES)
    for it in range(cfg.iterations):
        idx_np = rng.integers(0, len(table), size=cfg.batch_episodes)
        idx = torch.from_numpy(idx_np)
        batch = env.rollout(net, idx, greedy=False, generator=gen)
        r = torch.from_numpy(env.rewards(idx_np, batch["tiers"].numpy())).float()
        returns = r[:, None].expand(-1, n_modules)
        adv = returns - batch["value"]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        flat = {
            "query": env.query[idx][:, None].expand(-1, n_modules, -1).reshape(-1, dim),
            "memory": batch["memory"].reshape(-1, dim),
            "module": torch.arange(n_modules).repeat(len(idx)),
            "tier": batch["tiers"].reshape(-1), "logp": batch["logp"].reshape(-1),
            "adv": adv.reshape(-1), "ret": returns.reshape(-1),
        }
        total = flat["tier"].shape[0]
        for _ in range(cfg.epochs):
            perm = torch.randperm(total, generator=gen)
            for start in range(0, total, cfg.minibatch):
                mb = perm[start:start + cfg.minibatch]
                logits, value = net(flat["query"][mb], flat["memory"][mb], flat["module"][mb])
                dist = torch.distributions.Categorical(logits=logits)
                ratio = torch.exp(dist.log_prob(flat["tier"][mb]) - flat["logp"][mb])
                a = flat["adv"][mb]
                policy_loss = -torch.min(ratio * a,
                                         torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip) * a).mean()
                value_loss = (value - flat["ret"][mb]).pow(2).mean()
                loss = (policy_loss + cfg.value_coef * value_loss
                        - cfg.entropy_coef * dist.entropy().mean())
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
                opt.step()
        history.mean_reward.append(float(r.mean()))
        greedy = env.rollout(net, all_idx, greedy=True)
        history.greedy_reward.append(float(env.rewards(all_idx.numpy(),
                                                       greedy["tiers"].numpy()).mean()))
        if progress:
            progress(it, history.mean_reward[-1])
    net.eval()
    meta = {**(router.meta if router else {}), "lambda": reward.lam, "alpha": reward.alpha,
            "iterations": cfg.iterations, "queries": len(table)}
    return Router(net, meta=meta), history


def greedy_tiers(router: Router, table: list[QueryOutcomes]) -> np.ndarray:
    """Tier indices (N, 5) the router picks greedily for each training query."""
    env_q = torch.from_numpy(np.stack([q.query_vec for q in table])).float()
    mem = torch.from_numpy(np.stack([q.memory_vecs for q in table])).float()
    n = len(table)
    tiers = torch.zeros(n, len(MODULES), dtype=torch.long)
    with torch.no_grad():
        for step in range(len(MODULES)):
            m = mem[:, 0] if step == 0 else mem[torch.arange(n), 1 + tiers[:, 0]]
            logits, _ = router.net(env_q, m, torch.full((n,), step))
            tiers[:, step] = logits.argmax(-1)
    return tiers.numpy()


def tier_names(indices: np.ndarray) -> list[dict[str, str]]:
    return [{m: TIERS[int(t)] for m, t in zip(MODULES, row, strict=True)} for row in indices]
