"""Reindex without downtime: build a new collection from an existing one, then switch the alias.

1. The source is an alias (its collection is rebuilt and the alias switched) or a collection:
   the aliases pointing to it are switched; a collection no alias names is replaced by an
   alias of the same name (the old collection is deleted once the alias points to the new one).
2. The new collection gets the source's schema, plus any payload fields the request adds to
   filter on (a field the source declares keeps its type; every copied document must hold the
   added type at an added key, or the reindex stops and names it). Its vectors are copied when the source's
   recorded models are the loaded ones, else recomputed from the stored text (title + passage)
   with the loaded models (``reembed`` forces that); it records the models that wrote them.
3. Writes go on during the bulk copy; the documents they touch are recorded
   (:class:`~services.retrieval.aliases.WriteGate`) and copied again afterwards, in rounds,
   the last one with writes paused, so nothing written meanwhile is lost. The alias switches
   inside that pause: every request sees the old collection or the new one, whole.
4. Searches never wait: each resolves the alias once and reads one collection.

On failure or cancellation the new collection is deleted and the alias left as it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from services.common import payload_types, validation
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.retrieval import calibration, model_guard
from services.retrieval.aliases import Aliases, WriteGate, chunks
from services.retrieval.backends.base import DOC_ID, LATE, CollectionSchema, Filter, MatchAny, PointIn, SparseVector
from services.retrieval.backends.translation import point_in
from services.retrieval.store import DocumentStore

log = logging.getLogger(__name__)

COPYING, CATCHING_UP, DONE = "copying", "catching_up", "done"
PAGE = 256
#: Catch-up rounds with writes flowing before the last one, with writes paused.
MAX_ROUNDS = 5


@dataclass(frozen=True)
class Progress:
    phase: str
    copied: int
    total: int
    source: str
    target: str
    alias: str = ""
    reembedded: bool = False


class Cancelled(Exception):
    pass


def default_target(base: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return f"{base[: 63 - len(stamp) - 1]}-{stamp}"


def reindex(
    store: DocumentStore,
    aliases: Aliases,
    gate: WriteGate,
    source: str,
    target: str = "",
    reembed: bool = False,
    progress: Callable[[Progress], None] = lambda p: None,
    cancelled: threading.Event | None = None,
    calibrate: Callable[[str], Any] | None = None,
    add_filter_fields: dict[str, str] | None = None,
) -> Progress:
    backend = store.backend
    added = dict(add_filter_fields or {})
    validation.collection_name(source, "source")
    known = aliases.all()
    if source in known:
        collection, switch, replace_name = known[source], [source], ""
    else:
        collection = source
        switch = aliases.of(source)
        replace_name = "" if switch else source
    schema = backend.schema(collection)  # NotFound names it
    _check_added(collection, schema.filter_fields, added)
    target = target or default_target(switch[0] if switch else source)
    validation.collection_name(target, "target")
    if target in backend.list_collections() or target in known:
        raise AlreadyExists(f"{target!r} already exists; name another target")
    differences = model_guard.mismatches(model_guard.recorded(schema.metadata), store.identity, schema.sparse)
    recompute = reembed or bool(differences) or schema.dense_dimension != store.embedder.dimension
    late = bool(schema.late_dimension)
    if recompute and late and store.late is None:
        raise FailedPrecondition(f"collection {collection!r} has late-interaction vectors and this service has no "
                                 "late-interaction model loaded to recompute them (RETRIEVAL_LATE_INTERACTION_MODEL_DIR)")
    metadata = dict(schema.metadata)
    if recompute:
        models = store.identity.record()
        if not late:
            models.pop("late_interaction", None)
        metadata.update(dense_model=store.embedder.name, models=models)
        metadata.pop(calibration.METADATA_KEY, None)  # other vectors: measured again below
    new_schema = CollectionSchema(
        name=target, dense_dimension=store.embedder.dimension if recompute else schema.dense_dimension,
        sparse=schema.sparse, filter_fields={**schema.filter_fields, **added}, metadata=metadata,
        late_dimension=(store.late.encoder.dimension if recompute else schema.late_dimension) if late else 0,
        late_quantization=schema.late_quantization,
    )
    total = backend.count(collection)
    state = Progress(COPYING, 0, total, collection, target, ",".join(switch) or replace_name, recompute)
    log.info("reindex started", extra={"source": collection, "target": target, "reembed": recompute,
                                       "differences": differences, "points": total})
    backend.create_collection(new_schema)
    gate.track(collection)
    try:
        copied = 0
        offset = None
        while True:  # 1. bulk copy, writes flowing
            _check(cancelled)
            page, offset = backend.scroll(collection, offset, PAGE, True)
            if page:
                backend.upsert(target, _points(store, page, recompute, schema.sparse, added))
                copied += len(page)
                state = replace(state, copied=copied)
                progress(state)
            if offset is None:
                break
        if recompute and calibrate is not None:  # before the switch: searches never see it unmeasured
            calibrate(target)
        state = replace(state, phase=CATCHING_UP)
        progress(state)
        for _ in range(MAX_ROUNDS):  # 2. what was written meanwhile, while writes still flow
            _check(cancelled)
            dirty = gate.take(collection)
            if len(dirty) < PAGE:
                _recopy(store, collection, target, dirty, recompute, schema.sparse, added)
                break
            _recopy(store, collection, target, dirty, recompute, schema.sparse, added)
        with gate.paused():  # 3. the last of it with writes paused, then the switch
            _recopy(store, collection, target, gate.take(collection), recompute, schema.sparse, added)
            gate.untrack(collection)
            if replace_name:
                aliases.replace_collection(replace_name, target, backend.delete_collection)
            for alias in switch:
                aliases.switch(alias, target)
    except BaseException:
        gate.untrack(collection)
        try:
            backend.delete_collection(target)
        except NotFound:
            pass
        except Exception:  # noqa: BLE001 - the original error matters more
            log.exception("could not delete the unfinished reindex target", extra={"target": target})
        raise
    state = replace(state, phase=DONE, copied=backend.count(target))
    progress(state)
    log.info("reindex done", extra={"source": collection, "target": target, "alias": state.alias,
                                    "points": state.copied, "reembedded": recompute})
    return state


def _check(cancelled: threading.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise Cancelled("the reindex was cancelled (the caller went away); the new collection was deleted")


def _recopy(store: DocumentStore, source: str, target: str, doc_ids: list[str], recompute: bool, sparse: bool,
            added: dict[str, str]) -> None:
    """Make ``doc_ids`` in ``target`` what they are in ``source`` (deleted ones deleted)."""
    backend = store.backend
    for ids in chunks(doc_ids, PAGE):
        where = Filter(must=(MatchAny(DOC_ID, tuple(ids)),))
        backend.delete_where(target, where)
        offset = None
        while True:
            page, offset = backend.scroll(source, offset, PAGE, True, where)
            if page:
                backend.upsert(target, _points(store, page, recompute, sparse, added))
            if offset is None:
                break


def _check_added(collection: str, declared: dict[str, str], added: dict[str, str]) -> None:
    for key, kind in added.items():
        if declared.get(key, kind) != kind:
            raise InvalidArgument("add_filter_fields", f"collection {collection!r} declares {key!r} "
                                  f"{payload_types.with_article(declared[key])} field; a reindex adds fields, it does not "
                                  "change their type")
    if len({**declared, **added}) > validation.MAX_FILTER_FIELDS:
        raise InvalidArgument("add_filter_fields", f"{collection!r} declares {len(declared)} fields; with these it would "
                                                   f"have {len({**declared, **added})}, more than {validation.MAX_FILTER_FIELDS}")


def _points(store: DocumentStore, page, recompute: bool, sparse: bool, added: dict[str, str]) -> list[PointIn]:
    for _, payload, _ in page if added else ():  # an added field: every document holds its type there
        found = payload_types.misfit(added, payload.get("payload") or {})
        if found is not None:
            key, kind, value = found
            raise InvalidArgument("add_filter_fields", f"document {payload.get('doc_id')!r} holds "
                                  f"{payload_types.describe(value)} at {key!r}, not {payload_types.with_article(kind)}: fix "
                                  f"that document or declare {key!r} with the type it holds; the reindex stopped and its "
                                  "new collection was deleted")
    if not recompute:
        return [point_in(pid, payload, vectors) for pid, payload, vectors in page]
    texts = [validation.document_text(str(p.get("title", "")), str(p.get("text", ""))) for _, p, _ in page]
    dense = store.embedder.embed_documents(texts)
    encoded = store.sparse_encoder.encode_documents(texts) if sparse else [None] * len(texts)
    late_vectors: list = [None] * len(texts)
    if any((vectors or {}).get(LATE) is not None for _, _, vectors in page):  # the collection has the stage
        late_vectors = [v.tolist() for v in store.late.encoder.embed_documents(texts)]
    return [
        PointIn(id=pid, dense=vector.tolist(),
                sparse=SparseVector(tuple(sv.indices), tuple(sv.values)) if sv is not None and sv.indices else None,
                payload=payload, late=tokens)
        for (pid, payload, _), vector, sv, tokens in zip(page, dense, encoded, late_vectors)
    ]
