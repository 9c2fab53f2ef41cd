"""agentkd: let a cheap student act for an expensive teacher whenever that is safe.

Public API::

    kd = agentkd.Distiller(teacher=..., student=..., mode="distill", log="sqlite:///agentkd.db")

    @kd.episode(task_id=lambda task: task.id, success=lambda result: result.ok)
    def solve(task): ...        # calls litellm.completion(model=<teacher>, ...) unchanged
"""

import os

# Offline-first: litellm otherwise fetches its price map from the network at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentkd.cascades.calibration import Calibration, CalibrationError, calibrate_log
from agentkd.config import (
    AcceptanceRule,
    Budget,
    Cascade,
    KeyWeights,
    Retrieval,
    load_cascade,
    save_cascade,
)
from agentkd.costs import register_price
from agentkd.distiller import Distiller
from agentkd.episode import EpisodeScope, current_episode
from agentkd.errors import (
    AgentKDError,
    BudgetExceeded,
    ConfigError,
    InputError,
    LocalModelError,
    StoreError,
    TeacherError,
)
from agentkd.export import DatasetCard, ExportFilters, export_dataset
from agentkd.local_models import register as _register_local
from agentkd.log import TrajectoryLog
from agentkd.report import RunSummary, run_summaries

# Makes litellm route "local/..." models to the in-process llama.cpp backend.
_register_local()

# agentkd catches provider errors (deferring to the teacher, logging the cause); litellm's
# "Give Feedback / Get Help" banner on every caught error would only be noise on stderr.
import litellm as _litellm  # noqa: E402

_litellm.suppress_debug_info = True

__version__ = "0.1.0"

__all__ = [
    "AcceptanceRule",
    "AgentKDError",
    "Budget",
    "BudgetExceeded",
    "Calibration",
    "CalibrationError",
    "Cascade",
    "ConfigError",
    "DatasetCard",
    "Distiller",
    "EpisodeScope",
    "ExportFilters",
    "InputError",
    "KeyWeights",
    "LocalModelError",
    "Retrieval",
    "RunSummary",
    "StoreError",
    "TeacherError",
    "TrajectoryLog",
    "calibrate_log",
    "current_episode",
    "export_dataset",
    "load_cascade",
    "register_price",
    "run_summaries",
    "save_cascade",
]
