"""Cross-encoder reranker on ONNX Runtime (default: ms-marco-MiniLM-L-12-v2).

The work is split in two steps so a dynamic batcher can group pairs from several
requests: :meth:`CrossEncoder.tokenize_pairs` (unpadded encodings, whose ``len(e.ids)``
is the real token count) and :meth:`CrossEncoder.infer` (pads one batch to its longest
member and runs the model). :meth:`CrossEncoder.score` combines both for one query.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Encoding

from services.common.model_dir import CROSS_ENCODER, model_dir as find_model_dir, resolve_model_dir
from services.common.onnx_session import encodings_to_inputs, open_model, run_with_io_binding, runtime_options
from services.common.tokenization import load_tokenizer

__all__ = ["CrossEncoder"]



if TYPE_CHECKING:
    from services.reranker.config import RerankerConfig


class CrossEncoder:
    """Score (query, passage) pairs; higher logit = more relevant.

    Truncation keeps the query: only the passage is cut to fit ``max_length``. When the
    query alone is too long, that pair falls back to ``longest_first`` truncation.

    Thread-safe: tokenizers are read-only after ``__init__`` and ORT ``run`` is
    thread-safe.

    Batch dependence: the shipped ONNX graph is int8 *dynamically quantized*
    (``DynamicQuantizeLinear`` + ``MatMulInteger``), whose activation scales are
    computed over the whole padded batch. A pair's logit therefore moves slightly
    (typically < 0.1 on a ~20-logit range) with the other pairs in its batch and with
    the padding. :meth:`score` is deterministic for a given list and permutation
    invariant (batches are formed from a canonical order); :meth:`infer` results depend
    on what the caller (e.g. a dynamic batcher) puts together. An fp32 model (e.g. via
    ``searchctl models fetch --hf``) is batch-invariant up to float rounding.

    Attributes:
        name: model directory name (e.g. ``"ms-marco-MiniLM-L-12-v2"``).
        provider: ORT execution provider in use (e.g. ``"CPUExecutionProvider"``).
        max_length: token limit per pair.
        batch_size: pairs per inference call in :meth:`score`.
        pad_id: padding token id used by :meth:`build_inputs`.
    """

    @classmethod
    def from_config(cls, cfg: RerankerConfig, intra_op_threads: int) -> CrossEncoder:
        """The cross-encoder the reranker settings describe (RERANKER_*, ORT_*)."""
        return cls(find_model_dir(cfg.model_dir, CROSS_ENCODER), max_length=cfg.max_length,
                   batch_size=cfg.max_batch_pairs, intra_op_threads=intra_op_threads, **runtime_options(cfg))

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        max_length: int = 256,
        batch_size: int = 32,
        provider: str = "auto",
        intra_op_threads: int = 0,
        graph_optimization: str = "all",
        spin: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_dir: Path = resolve_model_dir(model_dir)
        self.name: str = self.model_dir.name
        self.batch_size = batch_size
        self._tokenizer = load_tokenizer(
            self.model_dir, max_length, padding=False, truncation_strategy="only_second"
        )
        self._fallback_tokenizer = load_tokenizer(
            self.model_dir, max_length, padding=False, truncation_strategy="longest_first"
        )
        self.max_length: int = int(self._tokenizer.truncation["max_length"])
        model = open_model(self.model_dir, self.name, batch_size, self.max_length, provider, intra_op_threads,
                           graph_optimization, spin)
        self._session, self.provider, self._input_names = model.session, model.provider, model.input_names
        pad_id = self._tokenizer.token_to_id("[PAD]")
        self.pad_id: int = 0 if pad_id is None else int(pad_id)
        output = model.output
        self._output_name: str = output.name
        last = output.shape[-1] if output.shape else 1
        # Single-logit models are the norm; for multi-class heads use the last (positive) class.
        self._logit_column: int = -1 if isinstance(last, int) and last > 1 else 0

    # ------------------------------------------------------------------ split API

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Encoding]:
        """Tokenize ``(query, passage)`` pairs without padding, in input order.

        ``len(encoding.ids)`` is each pair's true token count (<= ``max_length``).
        """
        items = [(q, p) for q, p in pairs]
        if not items:
            return []
        try:
            return self._tokenizer.encode_batch(items)
        except Exception:  # noqa: BLE001 - tokenizers raises a bare Exception
            # A query longer than max_length cannot be handled by only_second; redo
            # pair by pair so only the offending pairs use longest_first.
            return [self._encode_one(q, p) for q, p in items]

    def build_inputs(self, encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
        """ONNX feeds for one batch, padded to the longest encoding in it."""
        arrays = encodings_to_inputs(encodings, self.pad_id)
        return {name: arrays[name] for name in self._input_names}

    def infer(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Run the model on one batch; return float32 logits of shape ``(len(encodings),)``.

        The raw model output is ``(n, 1)``; it is flattened here. The batch is padded to
        its longest member, so callers should group similar lengths.
        """
        if not encodings:
            return np.empty((0,), dtype=np.float32)
        feeds = self.build_inputs(encodings)
        logits = run_with_io_binding(self._session, feeds, self._output_name)
        logits = logits.reshape(len(encodings), -1)[:, self._logit_column]
        return np.ascontiguousarray(logits, dtype=np.float32)

    # ------------------------------------------------------------------ convenience

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Relevance logits for each passage against ``query``, in input order (float32)."""
        encodings = self.tokenize_pairs([(query, p) for p in passages])
        return self.score_encodings(encodings)

    def score_encodings(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Score pre-tokenized pairs in ``batch_size`` batches of similar length."""
        out = np.empty((len(encodings),), dtype=np.float32)
        # Length-sorted with ties broken by token ids: batch composition, and hence the
        # scores of a quantized model, does not depend on the input order.
        order = sorted(range(len(encodings)), key=lambda i: (len(encodings[i].ids), encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self.infer([encodings[i] for i in idx])
        return out

    def _encode_one(self, query: str, passage: str) -> Encoding:
        try:
            return self._tokenizer.encode(query, passage)
        except Exception:  # noqa: BLE001
            return self._fallback_tokenizer.encode(query, passage)

    def __repr__(self) -> str:
        return (
            f"CrossEncoder(name={self.name!r}, provider={self.provider!r}, "
            f"max_length={self.max_length}, batch_size={self.batch_size})"
        )
