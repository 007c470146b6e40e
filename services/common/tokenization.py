"""Tokenizer loading for the ONNX encoders: ``tokenizer.json`` with dynamic padding and
truncation capped at the model's positions."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tokenizers import Tokenizer

__all__ = ["load_tokenizer"]

logger = logging.getLogger(__name__)


def _model_max_positions(model_dir: Path) -> int | None:
    for name in ("config.json", "vectrix_config.json"):
        try:
            cfg = json.loads((model_dir / name).read_text())
        except (OSError, ValueError):
            continue
        for key in ("max_position_embeddings", "max_length"):
            value = cfg.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


def load_tokenizer(
    model_dir: str | os.PathLike[str],
    max_length: int,
    *,
    padding: bool = True,
    truncation_strategy: str = "longest_first",
) -> Tokenizer:
    """Load ``tokenizer.json`` with dynamic padding and truncation at ``max_length``.

    The shipped tokenizer files pad to a fixed 512 tokens; that padding is removed and,
    when ``padding`` is true, replaced by padding to the longest sequence of each
    ``encode_batch`` call. ``truncation_strategy`` is ``longest_first``, ``only_first``
    or ``only_second`` (``only_second`` keeps a cross-encoder's query intact; note that
    it raises if the first sequence alone exceeds ``max_length``).
    ``max_length`` is capped to the model's position-embedding size when known.
    """
    model_dir = Path(model_dir)
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8, got {max_length}")
    limit = _model_max_positions(model_dir)
    if limit is not None and max_length > limit:
        logger.warning(
            "max_length %d exceeds the model's %d positions; using %d",
            max_length, limit, limit,
            extra={"model_dir": str(model_dir)},
        )  # fmt: skip
        max_length = limit
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    previous = tokenizer.padding or {}
    pad_token = previous.get("pad_token") or "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        pad_id = int(previous.get("pad_id", 0))
    tokenizer.no_padding()
    if padding:
        tokenizer.enable_padding(
            pad_id=pad_id, pad_type_id=int(previous.get("pad_type_id", 0)), pad_token=pad_token
        )
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length, strategy=truncation_strategy)
    return tokenizer
