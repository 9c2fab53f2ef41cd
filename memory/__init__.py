"""BudgetMem: memory modules in Low/Mid/High tiers with an RL-trained router.

Owns the memory pipeline (chunking, retrieval, Filter / Entity / Temporal / Topic / Summary,
the answer call), the router policy and its PPO trainer over a cached rollout table, the
LoCoMo / LongMemEval / HotpotQA loaders, evaluation with the frontier plot, the
`agentkd memory` CLI and the Distiller hook (`integration.compress_history`).
"""

from agentkd.memory.config import MODULES, STRATEGIES, TIERS, MemoryConfig, memory_config
from agentkd.memory.modules import ModuleContext, ModuleResult
from agentkd.memory.pipeline import FixedTiers, MemoryIndex, Pipeline, PipelineResult, RandomTiers
from agentkd.memory.router import Router, RouterNet

__all__ = [
    "MODULES",
    "STRATEGIES",
    "TIERS",
    "FixedTiers",
    "MemoryConfig",
    "MemoryIndex",
    "ModuleContext",
    "ModuleResult",
    "Pipeline",
    "PipelineResult",
    "RandomTiers",
    "Router",
    "RouterNet",
    "memory_config",
]
