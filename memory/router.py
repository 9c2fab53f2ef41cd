"""The BudgetMem router: one shared actor-critic MLP that picks a tier per module per query.

Per module the input is [query embedding ‖ memory embedding] projected to 256, plus a learned
module embedding; a 2×256 ReLU trunk feeds a 3-way tier head (actor) and a value head
(critic). Decisions are made module by module as the query moves through the pipeline.
`Router.save` / `Router.load` round-trip exactly (greedy routing is deterministic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agentkd.errors import ConfigError, InputError
from agentkd.memory.config import MODULES, TIERS, check_module

FORMAT = "agentkd.memory.router/1"


class RouterNet(nn.Module):
    def __init__(self, embed_dim: int = 384, hidden: int = 256, n_modules: int = len(MODULES),
                 n_tiers: int = len(TIERS)) -> None:
        super().__init__()
        self.embed_dim, self.hidden = embed_dim, hidden
        self.proj = nn.Linear(2 * embed_dim, hidden)
        self.module_embedding = nn.Embedding(n_modules, hidden)
        self.trunk = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.policy_head = nn.Linear(hidden, n_tiers)
        self.value_head = nn.Linear(hidden, 1)
        # Small policy init: start near uniform so PPO explores every tier.
        nn.init.normal_(self.policy_head.weight, std=0.01)
        nn.init.zeros_(self.policy_head.bias)

    def forward(self, query: torch.Tensor, memory: torch.Tensor,
                module: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tier logits (B, 3) and state values (B,) for a batch of module decisions."""
        h = self.proj(torch.cat([query, memory], dim=-1)) + self.module_embedding(module)
        h = self.trunk(h)
        return self.policy_head(h), self.value_head(h).squeeze(-1)


class Router:
    """A trained (or fresh) `RouterNet` plus what it was trained for; a pipeline `TierPolicy`."""

    def __init__(self, net: RouterNet | None = None, *, meta: dict[str, Any] | None = None,
                 greedy: bool = True, seed: int | None = None) -> None:
        self.net = net or RouterNet()
        self.net.eval()
        self.meta: dict[str, Any] = dict(meta or {})
        self.greedy = greedy
        self.generator = torch.Generator().manual_seed(seed or 0)

    @staticmethod
    def _tensor(vec: np.ndarray, dim: int, what: str) -> torch.Tensor:
        arr = np.asarray(vec, dtype=np.float32).reshape(-1)
        if arr.shape[0] != dim:
            raise InputError(
                f"router {what} embedding has dimension {arr.shape[0]}, expected {dim}")
        return torch.from_numpy(arr.copy())

    def probs(self, module: str, query_vec: np.ndarray, memory_vec: np.ndarray) -> np.ndarray:
        check_module(module)
        d = self.net.embed_dim
        with torch.no_grad():
            logits, _ = self.net(self._tensor(query_vec, d, "query")[None],
                                 self._tensor(memory_vec, d, "memory")[None],
                                 torch.tensor([MODULES.index(module)]))
        return torch.softmax(logits[0], dim=-1).numpy()

    def choose(self, module: str, query_vec: np.ndarray, memory_vec: np.ndarray) -> str:
        p = self.probs(module, query_vec, memory_vec)
        if self.greedy:
            return TIERS[int(np.argmax(p))]
        idx = int(torch.multinomial(torch.from_numpy(p), 1, generator=self.generator))
        return TIERS[idx]

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, "state_dict": self.net.state_dict(),
                    "embed_dim": self.net.embed_dim, "hidden": self.net.hidden,
                    "modules": list(MODULES), "tiers": list(TIERS), "meta": self.meta}, p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> Router:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"router file not found: {p}. Train one with "
                             "`agentkd memory train --out router.pt`.")
        try:
            blob = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{p} is not a router file: {type(exc).__name__}: {exc}") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise InputError(f"{p} is not a BudgetMem router ({FORMAT}) file")
        if tuple(blob["modules"]) != MODULES or tuple(blob["tiers"]) != TIERS:
            raise ConfigError(f"{p} was trained for modules {blob['modules']} / tiers "
                              f"{blob['tiers']}, this version has {MODULES} / {TIERS}")
        net = RouterNet(embed_dim=int(blob["embed_dim"]), hidden=int(blob["hidden"]))
        net.load_state_dict(blob["state_dict"])
        return cls(net, meta=blob.get("meta") or {})
