"""The model guard: what wrote a collection's vectors, recorded at creation, checked on use.

A collection records the identity of the models that wrote its vectors (``metadata.models``):
the bi-encoder's name and the sha256 of its ``model.onnx``, the sparse analyzer and its
version, and the late-interaction model when there is one. Searching or writing it with other
models would mix incomparable vectors and return garbage without an error, so the store
refuses (FAILED_PRECONDITION) naming what is recorded, what is loaded, and the command that
rebuilds the collection with the loaded models (``searchctl reindex``).

Collections created before identities were recorded carry only ``dense_model`` (a name): for
them the name alone is checked.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition

#: The BM25 analyzer of services/retrieval/sparse.py. Bump the version whenever a change there
#: (tokenisation, stop list, stemmer, term ids, weighting) changes the vectors it produces.
SPARSE_ANALYZER = "bm25"
SPARSE_ANALYZER_VERSION = 1

REINDEX_COMMAND = "searchctl reindex {name}"

_hashes: dict[tuple[str, int, int], str] = {}
_hashes_lock = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, cached per (path, size, modification time)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    with _hashes_lock:
        if key in _hashes:
            return _hashes[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _hashes_lock:
        _hashes[key] = value
    return value


@dataclass(frozen=True)
class ModelIdentity:
    """What a store writes vectors with."""

    dense_model: str
    dense_sha256: str | None = None
    sparse_analyzer: str | None = SPARSE_ANALYZER
    sparse_version: int | None = SPARSE_ANALYZER_VERSION
    late_interaction_model: str | None = None
    late_interaction_sha256: str | None = None

    def record(self) -> dict[str, Any]:
        """The ``metadata.models`` entry of a collection created now."""
        out: dict[str, Any] = {"dense": {"name": self.dense_model, "sha256": self.dense_sha256}}
        if self.sparse_analyzer:
            out["sparse"] = {"analyzer": self.sparse_analyzer, "version": self.sparse_version}
        if self.late_interaction_model:
            out["late_interaction"] = {"name": self.late_interaction_model, "sha256": self.late_interaction_sha256}
        return out


def _model_file(model: Any) -> Path | None:
    """``model.onnx`` of an encoder (every encoder and embedder names its ``model_dir``, None
    for a model that has none)."""
    if model.model_dir is None:
        return None
    path = Path(model.model_dir) / "model.onnx"
    return path if path.is_file() else None


def identity_of(embedder: Any, sparse_encoder: Any = None, late_interaction: Any = None) -> ModelIdentity:
    """The identity of the loaded models (sha256 of each model file found)."""
    dense_file = _model_file(embedder)
    late_file = _model_file(late_interaction) if late_interaction is not None else None
    return ModelIdentity(
        dense_model=str(embedder.name),
        dense_sha256=file_sha256(dense_file) if dense_file else None,
        sparse_analyzer=str(getattr(sparse_encoder, "analyzer", SPARSE_ANALYZER)) if sparse_encoder is not None else None,
        sparse_version=int(getattr(sparse_encoder, "analyzer_version", SPARSE_ANALYZER_VERSION)) if sparse_encoder is not None else None,
        late_interaction_model=str(late_interaction.name) if late_interaction is not None else None,
        late_interaction_sha256=file_sha256(late_file) if late_file else None,
    )


def recorded(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a collection's metadata says wrote it (only the dense name for older collections)."""
    models = metadata.get("models")
    if isinstance(models, dict):
        return models
    name = metadata.get("dense_model")
    return {"dense": {"name": name}} if name else {}


def mismatches(recorded_models: dict[str, Any], loaded: ModelIdentity, sparse: bool = True) -> list[str]:
    """Each difference between what is recorded and what is loaded, as ``part key: collection X,
    service Y``. What a collection does not record is not compared (older collections record
    the dense model's name only); ``sparse=False`` skips the analyzer (no sparse vectors)."""
    now = loaded.record()
    out = []
    for part, fields in (("dense", ("name", "sha256")), ("sparse", ("analyzer", "version")),
                         ("late_interaction", ("name", "sha256"))):
        before, after = recorded_models.get(part), now.get(part)
        if not before or (part == "sparse" and not sparse):
            continue
        if not after:
            out.append(f"{part}: collection {_short(before.get('name') or before.get('analyzer'))}, service none")
            continue
        for key in fields:
            if before.get(key) is not None and before.get(key) != after.get(key):
                out.append(f"{part} {key}: collection {_short(before.get(key))}, service {_short(after.get(key))}")
    return out


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:
        return f"sha256 {value[:12]}…"
    return repr(value)


def check(name: str, metadata: dict[str, Any], loaded: ModelIdentity, sparse: bool = True) -> None:
    """Refuse (FAILED_PRECONDITION) when the collection's recorded models differ from ``loaded``."""
    differences = mismatches(recorded(metadata), loaded, sparse)
    if differences:
        raise FailedPrecondition(
            f"collection {name!r} was written by other models than this service runs "
            f"({'; '.join(differences)}): its vectors cannot be compared with the loaded models'. "
            f"Run `{REINDEX_COMMAND.format(name=name)}` to rebuild it with the loaded models "
            "(searches go on meanwhile), or serve it with the models it records"
        )
