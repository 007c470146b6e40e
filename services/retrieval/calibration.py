"""A collection's hybrid fusion weight, computed by the collection on its own documents.

Two ranked lists alone cannot tell which of them is the weak one (docs/QUALITY.md, "Fusion
robust to one weak input"): when BM25 is weak on a collection, today's fixed z-score weights
put the fused ranking below dense retrieval alone. The collection itself can tell, without a
single judged query: cut a few words out of its own documents and ask each list to find the
document they came from (self-retrieval). A list that finds far fewer of its documents than
the other, relative to the reference collection the default weight was chosen on, is the weak
one, and the fusion leans away from it.

The check (:meth:`FusionCalibrator.measure`): the first ``sample`` points in id order (ids
are uuid5 hashes of document ids, so this is a stable pseudo-random sample), from each a
window of :data:`WINDOW_WORDS` words at an offset drawn from its id, searched as a query by the
dense and the sparse list (top :data:`TOP`); each list's recall is the share of windows whose
own point it ranks in its top :data:`TOP`.

The weight (:func:`dense_weight_for`): ``rho = (dense / REFERENCE_DENSE) / (sparse /
REFERENCE_SPARSE)`` says how much better dense self-retrieves than it did on the reference
(SciFact train: 0.79 and 1.0 with the shipped bge-small-en and BM25). Inside the dead zone
(``1/DEAD_ZONE <= rho <= DEAD_ZONE``) the default weight stands, so a collection where both
lists are good ranks exactly as before; outside it the weight moves in logit space,
``logit(w) = logit(default) + SLOPE * (|ln rho| - ln DEAD_ZONE) * sign(ln rho)``. The constants
were chosen on SciFact train with one list weakened (scripts/study_cascade.py; the numbers and
the Cranfield check, on which nothing was chosen, are in docs/QUALITY.md). A window cut from a
document shares its words, so the check favours the lexical list by construction: that is why
the reference, not equality, is the yardstick, and why it detects a list that cannot see a
document's words (an analyzer that misses the language, a truncated index, a bi-encoder that
does not fit the domain) but not a collection whose *queries* use other words than its
documents.

When: a collection is measured once it holds ``sample`` documents (RETRIEVAL_FUSION_CALIBRATION_SAMPLE) and again each time
its document count has doubled since the last measurement (:meth:`FusionCalibrator.note_writes`,
called after upserts; the work runs on the calibrator's own thread, off every request path), and
after a reindex. The result is recorded in the collection's metadata (:data:`METADATA_KEY`), which
every replica reads, and shown by DescribeCollection. A request's ``fusion.dense_weight`` still
overrides it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.common.errors import ServiceError
from services.retrieval.backends.base import DENSE, PASSAGE, SPARSE, Filter, Match, Nearest

log = logging.getLogger(__name__)

__all__ = ["Calibration", "FusionCalibrator", "METADATA_KEY", "dense_weight_for", "one_list_weak", "pseudo_query"]

#: Key of the measurement in a collection's metadata.
METADATA_KEY = "fusion_calibration"
#: Words per window, list depth searched.
WINDOW_WORDS = 12
TOP = 10
#: Self-retrieval recall@10 of the reference collection, SciFact train (scripts/study_cascade.py).
REFERENCE_DENSE = 0.79
REFERENCE_SPARSE = 1.0
#: Relative strengths within this factor of the reference keep the default weight.
DEAD_ZONE = 1.5
#: How fast the weight leaves the default outside the dead zone (logit per unit of ln rho).
SLOPE = 4.0
#: The weight never goes past these bounds: neither list is ever dropped entirely.
WEIGHT_BOUNDS = (0.05, 0.95)
#: Bumped when the check changes what it measures (a recorded older measurement is redone).
CHECK_VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """One measurement of a collection's lists, and the dense weight it gives."""

    dense_weight: float
    dense_recall: float
    sparse_recall: float
    sample: int
    documents: int
    measured_at: float
    check_version: int = CHECK_VERSION

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, raw: Any) -> Calibration | None:
        """The recorded measurement, or None when absent, unreadable or from an older check."""
        if not isinstance(raw, dict) or raw.get("check_version") != CHECK_VERSION:
            return None
        try:
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None


def _log_rho(dense_recall: float, sparse_recall: float) -> float:
    """ln of how much better dense self-retrieves than sparse, relative to the reference."""
    eps = 1e-3  # a list that found nothing is very weak, not infinitely so
    return math.log((max(dense_recall, eps) / REFERENCE_DENSE) / (max(sparse_recall, eps) / REFERENCE_SPARSE))


def one_list_weak(calibration: Calibration | None) -> bool:
    """Whether the check found one list weak (outside the dead zone): the fused first stage of
    such a collection is less to be trusted, and the gateway's auto policy reranks it
    (services/gateway/cascade.py)."""
    if calibration is None or (calibration.dense_recall <= 0 and calibration.sparse_recall <= 0):
        return False
    return abs(_log_rho(calibration.dense_recall, calibration.sparse_recall)) > math.log(DEAD_ZONE)


def dense_weight_for(dense_recall: float, sparse_recall: float, default: float) -> float:
    """The dense list's fusion weight for these self-retrieval recalls (module docstring)."""
    if dense_recall <= 0 and sparse_recall <= 0:
        return default
    log_rho = _log_rho(dense_recall, sparse_recall)
    shift = abs(log_rho) - math.log(DEAD_ZONE)
    if shift <= 0:
        return default
    logit = math.log(default / (1.0 - default)) + math.copysign(SLOPE * shift, log_rho)
    low, high = WEIGHT_BOUNDS
    return round(min(high, max(low, 1.0 / (1.0 + math.exp(-logit)))), 4)


def pseudo_query(text: str, key: str, words: int = WINDOW_WORDS) -> str | None:
    """``words`` consecutive words of ``text`` at an offset drawn from ``key`` (stable across
    processes); None when the text is shorter."""
    tokens = text.split()
    if len(tokens) < words:
        return None
    offset = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % (len(tokens) - words + 1)
    return " ".join(tokens[offset : offset + words])


class FusionCalibrator:
    """Measures collections in the background and records their fusion weight.

    ``store`` is the retrieval DocumentStore (its backend, sparse encoder and index text);
    ``embed_queries`` embeds query texts without the query cache (pseudo-queries would only
    evict real ones). ``sample``: documents measured, and the size from which a collection is
    measured. ``debounce_s``: a measurement waits until the collection has had no writes for
    this long (a bulk load is measured once it pauses, not at every batch).
    """

    def __init__(self, store: Any, embed_queries: Callable[[Sequence[str]], Any], default_weight: float,
                 sample: int, debounce_s: float = 2.0) -> None:
        self.sample = sample
        self.store = store
        self.embed_queries = embed_queries
        self.default_weight = default_weight
        self.debounce_s = debounce_s
        self._cond = threading.Condition()
        self._pending: dict[str, float] = {}  # collection -> time of its last write
        self._written: dict[str, int] = {}  # documents written since the last count
        self._closed = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name="fusion-calibrator", daemon=True)
        self._thread.start()

    # -- scheduling ----------------------------------------------------------------------

    def note_writes(self, name: str, documents: int, force: bool = False) -> None:
        """``documents`` were written to ``name``: measure it again once it may have doubled."""
        with self._cond:
            if self._closed:
                return
            self._written[name] = self._written.get(name, 0) + documents
            recorded = self._recorded(name)
            threshold = self.sample if recorded is None else recorded.documents
            if force or self._written[name] >= threshold or name in self._pending:
                self._pending[name] = time.monotonic()
                self._cond.notify_all()

    def idle(self) -> bool:
        """Nothing pending or running (tests and benchmarks wait for this)."""
        with self._cond:
            return not self._pending and not self._busy

    def close(self, timeout_s: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _recorded(self, name: str) -> Calibration | None:
        try:
            return Calibration.from_metadata(self.store.backend.schema(name).metadata.get(METADATA_KEY))
        except ServiceError:
            return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    ready = [n for n, t in self._pending.items() if now - t >= self.debounce_s]
                    if ready:
                        name = ready[0]
                        del self._pending[name]
                        self._written[name] = 0
                        self._busy = True
                        break
                    wait = min((self.debounce_s - (now - t) for t in self._pending.values()), default=None)
                    self._cond.wait(wait)
                if self._closed:
                    return
            try:
                self.calibrate_if_due(name)
            except Exception:  # the default weight keeps serving; the next writes try again
                log.warning("fusion calibration failed", extra={"collection": name}, exc_info=True)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # -- measuring -----------------------------------------------------------------------

    def calibrate_if_due(self, name: str, force: bool = False) -> Calibration | None:
        """Measure ``name`` and record the result when it has doubled since the last measurement
        (``force``: whatever the last one was, e.g. after a reindex re-embedded it)."""
        schema = self.store.backend.schema(name)
        if not schema.sparse:
            return None
        documents = self.store.backend.count(name, Filter(must=(Match(PASSAGE, 0),)))
        recorded = Calibration.from_metadata(schema.metadata.get(METADATA_KEY))
        if documents < self.sample or (not force and recorded is not None and documents < 2 * recorded.documents):
            return recorded
        result = self.measure(name, documents)
        self.store.backend.update_metadata(name, {METADATA_KEY: result.to_metadata()})
        log.info("fusion calibrated", extra={"collection": name, **result.to_metadata()})
        return result

    def measure(self, name: str, documents: int) -> Calibration:
        """Self-retrieval recall of each list on ``name`` and the weight it gives (no write)."""
        windows: list[tuple[str, str]] = []  # (point id, pseudo-query)
        offset = None
        while len(windows) < self.sample:
            page, offset = self.store.backend.scroll(name, offset, self.sample, False)
            for pid, payload, _ in page:
                text = self.store.index_text(str(payload.get("title", "")), str(payload.get("text", "")))
                query = pseudo_query(text, pid)
                if query is not None and len(windows) < self.sample:
                    windows.append((pid, query))
            if offset is None:
                break
        if not windows:
            return Calibration(self.default_weight, 0.0, 0.0, 0, documents, time.time())
        vectors = self.embed_queries([q for _, q in windows])
        dense_found = sparse_found = 0
        step = 32  # engine calls in small batches: the embedded engine holds the interpreter while it searches
        for start in range(0, len(windows), step):
            chunk = windows[start : start + step]
            queries: list[Nearest] = []
            has_sparse: list[bool] = []
            for (pid, text), vector in zip(chunk, vectors[start : start + step]):
                queries.append(Nearest(DENSE, [float(x) for x in vector], TOP, None, with_payload=False))
                sparse = self.store.sparse_query(text)
                has_sparse.append(sparse is not None)
                if sparse is not None:
                    queries.append(Nearest(SPARSE, sparse, TOP, None, with_payload=False))
            hits = iter(self.store.backend.query(name, queries))
            for (pid, _), lexical in zip(chunk, has_sparse):
                dense_found += any(h.id == pid for h in next(hits))
                if lexical:
                    sparse_found += any(h.id == pid for h in next(hits))
        n = len(windows)
        dense_recall, sparse_recall = dense_found / n, sparse_found / n
        return Calibration(dense_weight_for(dense_recall, sparse_recall, self.default_weight),
                           round(dense_recall, 4), round(sparse_recall, 4), n, documents, time.time())
