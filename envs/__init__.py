"""Environments (ALFWorld, AppWorld), the reference ReAct agent, and benchmark runs."""

from agentkd.envs.base import Env
from agentkd.envs.react import EpisodeResult, closest_admissible, react_agent, react_key

__all__ = ["Env", "EpisodeResult", "closest_admissible", "react_agent", "react_key"]
