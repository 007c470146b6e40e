"""BM25 sparse vectors for Qdrant's ``Modifier.IDF``.

The collection's sparse vector is configured with ``modifier=IDF``, so Qdrant keeps the
document frequencies and multiplies each query term by

    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

at query time. That keeps IDF exact as documents come and go; nothing corpus-wide lives
here. What this module computes (the approach of fastembed's ``Qdrant/bm25``):

* document side: per unique term, BM25's term-frequency saturation with length
  normalisation, ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avg_doc_length))``, where
  ``dl`` is the number of analyzed tokens (after stop words are removed);
* query side: ``1.0`` per unique query term.

The dot product Qdrant computes is then ``sum_t idf(t) * doc_value(t)``: Okapi BM25 with a
fixed ``avg_doc_length`` instead of the corpus's running average (which a vector store
cannot keep up to date per point).

Analyzer: Unicode NFKC normalisation and case folding, word tokenisation (``\\w+`` with
inner apostrophes kept, so contractions meet the stop list), the Snowball English stop
list, tokens longer than 40 characters dropped, and the Snowball stemmer from the
``snowballstemmer`` package.

Term ids: ``zlib.crc32`` of the UTF-8 stem masked to 31 bits: deterministic across
processes, machines and Python versions (never the salted built-in ``hash``). Distinct
stems can collide (expected ~0.2 collisions for a 30k-term vocabulary); a collision only
merges two rare terms' statistics.
"""

from __future__ import annotations

import re
import threading
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

__all__ = [
    "ENGLISH_STOP_WORDS",
    "Bm25SparseEncoder",
    "SparseEmbedding",
    "term_id",
]

#: The Snowball project's English stop word list (snowball.tartarus.org, english/stop.txt),
#: including its contractions. Apostrophes are ASCII; the analyzer maps U+2019 to ASCII.
ENGLISH_STOP_WORDS: frozenset[str] = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what which
    who whom this that these those am is are was were be been being have has had having do
    does did doing would should could ought i'm you're he's she's it's we're they're i've
    you've we've they've i'd you'd he'd she'd we'd they'd i'll you'll he'll she'll we'll
    they'll isn't aren't wasn't weren't hasn't haven't hadn't doesn't don't didn't won't
    wouldn't shan't shouldn't can't cannot couldn't mustn't let's that's who's what's here's
    there's when's where's why's how's a an the and but if or because as until while of at
    by for with about against between into through during before after above below to from
    up down in out on off over under again further then once here there when where why how
    all any both each few more most other some such no nor not only own same so than too
    very
    """.split()
)

#: Stop lists by Snowball language name. Languages without one keep every token.
STOP_WORDS: dict[str, frozenset[str]] = {"english": ENGLISH_STOP_WORDS}

#: Tokens longer than this (URLs glued together, base64, hashes) are dropped.
MAX_TOKEN_LENGTH = 40

# A word: letters/digits/underscore, with inner apostrophes kept ("don't", "cell's").
_TOKEN_RE = re.compile(r"\w+(?:'\w+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_TERM_ID_MASK = 0x7FFFFFFF


@dataclass(frozen=True)
class SparseEmbedding:
    """A sparse vector: ``indices`` sorted ascending and unique, ``values`` aligned."""

    indices: list[int]
    values: list[float]

    def __len__(self) -> int:
        return len(self.indices)

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.indices, self.values))


def term_id(term: str) -> int:
    """Stable 31-bit id of an analyzed term (fits Qdrant's u32 sparse indices)."""
    return zlib.crc32(term.encode("utf-8")) & _TERM_ID_MASK


class Bm25SparseEncoder:
    """Encode documents and queries into BM25 sparse vectors for a ``Modifier.IDF`` field.

    Args:
        language: a Snowball stemmer language (``snowballstemmer.algorithms()``). Stop
            words are removed for languages in :data:`STOP_WORDS` (English).
        k1: term-frequency saturation (BM25 ``k1``).
        b: length normalisation strength (0 = none, 1 = full).
        avg_doc_length: the document length (in analyzed tokens) that counts as average.

    Thread-safe: stemmer objects are per thread; the stem cache is an ``lru_cache``.
    """

    def __init__(
        self,
        language: str = "english",
        k1: float = 1.2,
        b: float = 0.75,
        avg_doc_length: float = 256.0,
    ) -> None:
        if language not in snowballstemmer.algorithms():
            raise ValueError(f"unsupported language {language!r}; one of {sorted(snowballstemmer.algorithms())}")
        if k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {k1}")
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {b}")
        if avg_doc_length <= 0:
            raise ValueError(f"avg_doc_length must be > 0, got {avg_doc_length}")
        self.language = language
        self.k1 = float(k1)
        self.b = float(b)
        self.avg_doc_length = float(avg_doc_length)
        self.stop_words: frozenset[str] = STOP_WORDS.get(language, frozenset())
        self._local = threading.local()
        self._stem = lru_cache(maxsize=262_144)(self._stem_uncached)

    # ------------------------------------------------------------------ analysis

    def _stem_uncached(self, token: str) -> str:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = snowballstemmer.stemmer(self.language)
        return stemmer.stemWord(token)

    def analyze(self, text: str) -> list[str]:
        """Normalise, tokenise, drop stop words and over-long tokens, stem. In text order."""
        if not text:
            return []
        normalized = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
        out: list[str] = []
        for token in _TOKEN_RE.findall(normalized):
            if token in self.stop_words or len(token) > MAX_TOKEN_LENGTH:
                continue
            stem = self._stem(token)
            if stem:
                out.append(stem)
        return out

    # ------------------------------------------------------------------ encoding

    def term_weights(self, tokens: Sequence[str]) -> dict[str, float]:
        """BM25 document-side weight per unique analyzed token (no IDF)."""
        if not tokens:
            return {}
        norm = self.k1 * (1.0 - self.b + self.b * len(tokens) / self.avg_doc_length)
        return {term: tf * (self.k1 + 1.0) / (tf + norm) for term, tf in Counter(tokens).items()}

    def encode_document(self, text: str) -> SparseEmbedding:
        by_id: dict[int, float] = {}
        for term, weight in self.term_weights(self.analyze(text)).items():
            tid = term_id(term)
            # A hash collision merges the two terms: add their saturated weights.
            by_id[tid] = by_id.get(tid, 0.0) + weight
        return _embedding(by_id)

    def encode_documents(self, texts: Iterable[str]) -> list[SparseEmbedding]:
        """One embedding per text, in order. Texts with no indexable term give an empty one."""
        return [self.encode_document(t) for t in texts]

    def encode_query(self, text: str) -> SparseEmbedding:
        """1.0 per unique query term (Qdrant supplies the IDF). Empty when nothing is left."""
        return _embedding(dict.fromkeys((term_id(t) for t in self.analyze(text)), 1.0))

    def __repr__(self) -> str:
        return (
            f"Bm25SparseEncoder(language={self.language!r}, k1={self.k1}, b={self.b}, "
            f"avg_doc_length={self.avg_doc_length})"
        )


def _embedding(by_id: dict[int, float]) -> SparseEmbedding:
    indices = sorted(by_id)
    return SparseEmbedding(indices=indices, values=[float(by_id[i]) for i in indices])
