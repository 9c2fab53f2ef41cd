"""In-context distillation: embed, store and retrieve teacher steps as demos for the student."""

from agentkd.retrieval.collect import demo_episode_from_log, demos_from_log, split_reasoning
from agentkd.retrieval.embedder import DEFAULT_MODEL, Embedder, get_embedder
from agentkd.retrieval.formatting import DemoTemplate, default_template, inject_demos
from agentkd.retrieval.keys import KeyFunction, StepKey, default_key
from agentkd.retrieval.store import DemoEpisode, DemoStep, DemoStore, DemoWindow

__all__ = [
    "DEFAULT_MODEL",
    "DemoEpisode",
    "DemoStep",
    "DemoStore",
    "DemoTemplate",
    "DemoWindow",
    "Embedder",
    "KeyFunction",
    "StepKey",
    "default_key",
    "default_template",
    "demo_episode_from_log",
    "demos_from_log",
    "get_embedder",
    "inject_demos",
    "split_reasoning",
]
