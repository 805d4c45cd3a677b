"""Cleaning steps for corpora, each counting what it removed so `charwise info` can report it.

Steps run in a fixed order on batches of (text, is_retweet) pieces, where a piece is a document
or a block of a plain text (cut after a newline, so a CR LF pair is never split): the Project
Gutenberg header and licence (a whole file), newlines (CR LF and a lone CR become LF), the
byte-order mark U+FEFF, unpaired surrogates (from JSON escapes; no text encoding can write
them), drop retweets, HTML-unescape, strip URLs, fold to ASCII, cut documents to a maximum
length (--max-length; a document is cut, not dropped). Dropping rare characters
(--min-char-count) needs the counts of the whole corpus and runs afterwards.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

URL = re.compile(r"https?://\S+|www\.\S+")  # what --strip-urls removes
SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate (a pair is one character)
RETWEET_PREFIX = "RT @"  # a document starting with this is a retweet (old-style)
# Typographic characters that NFKD leaves alone but that have an obvious ASCII spelling.
ASCII_SPELLING = {
    "\u2018": "'",  # left single quotation mark
    "\u2019": "'",  # right single quotation mark (the usual apostrophe)
    "\u201a": "'",
    "\u201b": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u201f": '"',
    "\u2010": "-",
    "\u2011": "-",
    "\u2012": "-",
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u2015": "-",
    "\u2212": "-",  # minus sign
    "\u00ab": '"',
    "\u00bb": '"',
}

Piece = tuple[str, bool]  # (text, is_retweet)


@dataclass
class Step:
    """What one cleaning step did: characters and documents removed, distinct chars after it."""

    name: str
    chars_removed: int = 0
    docs_removed: int = 0
    chars: set[str] = field(default_factory=set)  # distinct characters after this step
    K: int | None = None  # distinct characters after this step, once known


@dataclass
class Report:
    """The cleaning record of a corpus: one Step per step that ran, ASCII folding details."""

    steps: list[Step]
    dropped: Counter = field(default_factory=Counter)  # non-ASCII chars removed by folding
    folded: int = 0  # non-ASCII characters replaced by an ASCII spelling
    skipped: list[str] = field(default_factory=list)  # binary files left out of a folder

    def to_json(self) -> dict:
        return {
            "steps": [[s.name, s.chars_removed, s.docs_removed, s.K] for s in self.steps],
            "dropped": dict(self.dropped),
            "folded": self.folded,
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, obj: dict) -> Report:
        steps = [Step(name, chars, docs, K=K) for name, chars, docs, K in obj["steps"]]
        return cls(steps, Counter(obj["dropped"]), obj["folded"], obj.get("skipped", []))

    def format(self) -> str:
        """The table printed by `charwise info`."""
        lines = []
        if self.skipped:
            shown = ", ".join(self.skipped[:5]) + (", ..." if len(self.skipped) > 5 else "")
            lines.append(f"  skipped {len(self.skipped):,} binary file(s): {shown}")
        lines += [f"  {'step':<16}{'chars removed':>15}{'docs removed':>14}{'K after':>9}"]
        for s in self.steps:
            lines.append(f"  {s.name:<16}{s.chars_removed:>15,}{s.docs_removed:>14,}{s.K:>9,}")
        if any(s.chars_removed < 0 for s in self.steps):
            lines.append("  (a negative count: the step lengthened the text, e.g. '…' -> '...')")
        if self.folded or self.dropped:
            lines.append(
                f"  ascii: {self.folded:,} characters folded to an ASCII spelling, "
                f"{sum(self.dropped.values()):,} dropped ({len(self.dropped)} distinct):"
            )
            ranked = sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0]))
            for i in range(0, len(ranked), 8):
                lines.append("    " + "  ".join(f"{c!r} {n:,}" for c, n in ranked[i : i + 8]))
        return "\n".join(lines)


def ascii_spelling(ch: str) -> str:
    """An ASCII spelling of one character: itself, its accent-free NFKD form, or '' (dropped)."""
    if ord(ch) < 128:
        return ch
    if ch in ASCII_SPELLING:
        return ASCII_SPELLING[ch]
    return "".join(c for c in unicodedata.normalize("NFKD", ch) if ord(c) < 128)


class Cleaner:
    """Applies the enabled steps to batches of pieces; records statistics when asked."""

    def __init__(
        self,
        drop_retweets: bool = False,
        html_unescape: bool = False,
        strip_urls: bool = False,
        ascii: bool = False,
        newlines: bool = False,
        gutenberg: bool = False,
        max_length: int = 0,
    ):
        self.max_length = max_length  # documents are cut to this many characters (0: not)
        self.enabled = {
            "gutenberg": gutenberg,
            "newlines": newlines,
            "bom": newlines,  # both come with the file, not the text: --newline keep keeps both
            "surrogates": True,
            "drop-retweets": drop_retweets,
            "html-unescape": html_unescape,
            "strip-urls": strip_urls,
            "ascii": ascii,
            "max-length": max_length > 0,
        }
        names = ["read"] + [name for name, on in self.enabled.items() if on]
        self.report = Report([Step(name) for name in names])
        self._fold: dict[int, str] = {}  # str.translate table, grown as characters appear

    def step(self, name: str) -> Step:
        return next(s for s in self.report.steps if s.name == name)

    def clean(self, batch: list[Piece], record: bool = False) -> list[str]:
        """The cleaned texts of a batch (retweets left out); statistics when `record`."""
        texts = [text for text, _ in batch]
        if record:
            self._record("read", texts, texts, 0)
        if self.enabled["gutenberg"]:
            from charwise.datasets import strip_gutenberg

            texts = self._record_if(
                record, "gutenberg", texts, list(map(strip_gutenberg, texts)), 0
            )
        if self.enabled["newlines"]:
            out = [t.replace("\r\n", "\n").replace("\r", "\n") if "\r" in t else t for t in texts]
            texts = self._record_if(record, "newlines", texts, out, 0)
        if self.enabled["bom"]:
            out = [t.replace("\ufeff", "") if "\ufeff" in t else t for t in texts]
            texts = self._record_if(record, "bom", texts, out, 0)
        out = [SURROGATE.sub("", t) if not t.isascii() else t for t in texts]
        texts = self._record_if(record, "surrogates", texts, out, 0)
        batch = [(t, rt) for t, (_, rt) in zip(texts, batch, strict=True)]
        if self.enabled["drop-retweets"]:
            keep = [text for text, rt in batch if not (rt or text.startswith(RETWEET_PREFIX))]
            self._record_if(record, "drop-retweets", texts, keep, len(texts) - len(keep))
            texts = keep
        if self.enabled["html-unescape"]:
            out = [html.unescape(t) if "&" in t else t for t in texts]
            texts = self._record_if(record, "html-unescape", texts, out, 0)
        if self.enabled["strip-urls"]:
            out = [URL.sub("", t) for t in texts]
            texts = self._record_if(record, "strip-urls", texts, out, 0)
        if self.enabled["ascii"]:
            out = [self._to_ascii(t, record) for t in texts]
            texts = self._record_if(record, "ascii", texts, out, 0)
        if self.enabled["max-length"]:  # last: folding may lengthen a document ('…' -> '...')
            out = [t[: self.max_length] for t in texts]
            texts = self._record_if(record, "max-length", texts, out, 0)
        return texts

    def _to_ascii(self, text: str, record: bool) -> str:
        if text.isascii():
            return text
        wide = [ch for ch in set(text) if ord(ch) >= 128]
        for ch in wide:
            if ord(ch) not in self._fold:
                self._fold[ord(ch)] = ascii_spelling(ch)
        if record:
            for ch in wide:
                if self._fold[ord(ch)]:
                    self.report.folded += text.count(ch)
                else:
                    self.report.dropped[ch] += text.count(ch)
        return text.translate(self._fold)

    def _record_if(self, record: bool, name: str, before, after, docs_removed: int):
        if record:
            self._record(name, before, after, docs_removed)
        return after

    def _record(self, name: str, before: list[str], after: list[str], docs_removed: int) -> None:
        step = self.step(name)
        step.chars_removed += sum(map(len, before)) - sum(map(len, after))
        step.docs_removed += docs_removed
        for text in after:
            step.chars.update(text)
