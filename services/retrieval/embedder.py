"""Bi-encoder (dense embedding) model on ONNX Runtime.

Default model: ``bge-small-en`` (384 dimensions, CLS pooling, L2-normalised, queries
prefixed with the BGE retrieval instruction). Mean pooling is available for models such
as e5 that need it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Encoding

from services.common.model_dir import BI_ENCODER, model_dir as find_model_dir, resolve_model_dir
from services.common.onnx_session import encodings_to_inputs, open_model, run_with_io_binding, runtime_options
from services.common.tokenization import load_tokenizer

if TYPE_CHECKING:
    from services.retrieval.config import RetrievalConfig

__all__ = ["BGE_QUERY_PREFIX", "BiEncoder"]

BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "


class BiEncoder:
    """Embed queries and documents into dense float32 vectors.

    Thread-safe: the tokenizer is configured once and only read afterwards, and ORT
    ``InferenceSession.run`` may be called concurrently, so one instance can serve a
    thread pool.

    Batch dependence: the shipped ONNX graphs are int8 *dynamically quantized*
    (``DynamicQuantizeLinear`` + ``MatMulInteger``); activation scales are computed per
    tensor, i.e. over the whole padded batch. A text's vector therefore varies slightly
    with the other texts in its batch (cosine to the unbatched vector ~0.995). Results
    are deterministic for a given input list, and permuting the input only permutes the
    output, because batches are formed from a canonical (length, text) order.

    Attributes:
        name: model directory name (e.g. ``"bge-small-en"``).
        dimension: embedding size (384 for bge-small-en).
        provider: ORT execution provider in use (e.g. ``"CPUExecutionProvider"``).
        max_length: token limit per text (longer texts are truncated).
    """

    @classmethod
    def from_config(cls, cfg: RetrievalConfig, intra_op_threads: int) -> BiEncoder:
        """The bi-encoder the retrieval settings describe (EMBEDDER_*, ORT_*, RETRIEVAL_MODEL_DIR)."""
        return cls(find_model_dir(cfg.model_dir, BI_ENCODER), max_length=cfg.max_length, batch_size=cfg.batch_size,
                   intra_op_threads=intra_op_threads, **runtime_options(cfg))

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        max_length: int = 256,
        batch_size: int = 32,
        pooling: str = "cls",
        normalize: bool = True,
        query_prefix: str = BGE_QUERY_PREFIX,
        document_prefix: str = "",
        provider: str = "auto",
        intra_op_threads: int = 0,
        graph_optimization: str = "all",
        spin: bool = True,
    ) -> None:
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_dir: Path = resolve_model_dir(model_dir)
        self.name: str = self.model_dir.name
        self.batch_size = batch_size
        self.pooling = pooling
        self.normalize = normalize
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self._tokenizer = load_tokenizer(self.model_dir, max_length, padding=True)
        self._unpadded = load_tokenizer(self.model_dir, max_length, padding=False)
        self.max_length: int = int(self._tokenizer.truncation["max_length"])
        self._pad_id: int = int(self._tokenizer.padding["pad_id"])
        model = open_model(self.model_dir, self.name, batch_size, self.max_length, provider, intra_op_threads,
                           graph_optimization, spin)
        self._session, self.provider, self._input_names = model.session, model.provider, model.input_names
        output = model.output
        self._output_name: str = output.name
        self._output_rank = len(output.shape)
        last = output.shape[-1]
        self.dimension: int = (
            int(last) if isinstance(last, int) else int(self.infer(self._unpadded.encode_batch(["probe"])).shape[1])
        )

    # ------------------------------------------------------------------ public API

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """Tokenize ``texts`` as given (no prefix), padded to the longest one."""
        return self._tokenizer.encode_batch(list(texts))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Number of real (non-padding) tokens per text after truncation."""
        return [sum(e.attention_mask) for e in self.tokenize(texts)] if texts else []

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries (with ``query_prefix``); shape ``(n, dimension)``, float32."""
        return self.embed_encodings(self.tokenize_queries(texts))

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages (with ``document_prefix``); shape ``(n, dimension)``, float32."""
        return self.embed_encodings(self.tokenize_documents(texts))

    # ------------------------------------------------------------------ split API (dynamic batching)

    def tokenize_queries(self, texts: Sequence[str]) -> list[Encoding]:
        """Unpadded encodings of queries (with ``query_prefix``); ``len(e.ids)`` is the real length."""
        return self._unpadded.encode_batch([self.query_prefix + t for t in texts]) if texts else []

    def tokenize_documents(self, texts: Sequence[str]) -> list[Encoding]:
        """Unpadded encodings of passages (with ``document_prefix``)."""
        return self._unpadded.encode_batch([self.document_prefix + t for t in texts]) if texts else []

    def embed_encodings(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Embed pre-tokenized texts in ``batch_size`` batches of similar length, in input order."""
        if not encodings:
            return np.empty((0, self.dimension), dtype=np.float32)
        # Sort by token length so each batch pads little; write results back in input
        # order. Ties are broken by the token ids, so batch composition (which matters for
        # dynamically quantized models, see the class docstring) does not depend on input
        # order.
        order = sorted(range(len(encodings)), key=lambda i: (len(encodings[i].ids), encodings[i].ids))
        out = np.empty((len(encodings), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self.infer([encodings[i] for i in idx])
        return out

    def infer(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Run the model on one batch of unpadded encodings (padded here to the longest).

        Returns pooled (and, if configured, L2-normalised) float32 vectors, ``(n, dimension)``.
        """
        arrays = encodings_to_inputs(encodings, self._pad_id)
        feeds = {name: arrays[name] for name in self._input_names}
        hidden = run_with_io_binding(self._session, feeds, self._output_name)
        if self._output_rank == 2:  # model already pools
            vectors = hidden
        elif self.pooling == "cls":
            vectors = hidden[:, 0, :]
        else:
            mask = arrays["attention_mask"][:, :, None].astype(hidden.dtype)
            vectors = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        vectors = vectors.astype(np.float32, copy=False)
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.clip(norms, 1e-12, None)
        return vectors

    def __repr__(self) -> str:
        return (
            f"BiEncoder(name={self.name!r}, dimension={self.dimension}, provider={self.provider!r}, "
            f"pooling={self.pooling!r}, max_length={self.max_length})"
        )
