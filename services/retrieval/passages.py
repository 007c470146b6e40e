"""Long documents: truncate to the bi-encoder's window, or split into overlapping passages.

``truncate`` (the default) indexes one point per document: the model sees its first
``window`` tokens. ``split`` indexes one point per window of ``window`` tokens (with
``overlap`` tokens shared between neighbours), so the end of a long document is
searchable too; results are per document (its best passage), and the text returned is
that passage. Windows are cut on the model's own tokenizer offsets, so a passage is
exactly what the model can see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer


@dataclass(frozen=True)
class Passage:
    index: int
    text: str


class PassageSplitter:
    def __init__(self, tokenizer_file: str | Path, window: int, overlap: int = 32) -> None:
        if window < 16:
            raise ValueError("passage window must be at least 16 tokens")
        if not 0 <= overlap < window // 2:
            raise ValueError("overlap must be between 0 and half the window")
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.window = window - 8  # room for [CLS], [SEP] and a short title
        self.overlap = overlap

    def split(self, text: str) -> list[Passage]:
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        if len(offsets) <= self.window:
            return [Passage(0, text)]
        passages = []
        stride = self.window - self.overlap
        for n, start in enumerate(range(0, len(offsets), stride)):
            end = min(start + self.window, len(offsets))
            passages.append(Passage(n, text[offsets[start][0] : offsets[end - 1][1]]))
            if end == len(offsets):
                break
        return passages
