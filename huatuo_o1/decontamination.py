"""The Med-PaLM 2 contamination test: does a training text share 64 consecutive characters with an evaluation text?

prepare_training_data.py screens the training data with it (the paper screened all its training data
this way); `eval_texts` reads the evaluation files, `training_texts` the fields of training rows.

Texts are compared after `nfkc_lower_single_spaced` (Unicode NFKC, lower case, every run of whitespace one space,
none beside a CJK character, ends stripped), so a copy that differs only in case, line breaks or spacing still
counts, in Chinese too ("患者\n男性" is "患者男性": Chinese writes no spaces between words, so a line break
or a space there is layout, not text).

Speed: every 64-character window of the evaluation texts is hashed once (a polynomial hash mod 2^64,
computed for all windows of a batch of texts at once with numpy) into a sorted array, with two bitmaps
of hash bits in front of it. Each training text's windows are hashed the same way; the bitmaps turn
away all but ~1 in 400 absent windows with a memory read or two, the rest are looked up by binary
search. A window whose hash is found is compared character by character with the evaluation text, so
a hash collision can never drop an item.
"""

import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from huatuo_o1.evaluation.client import load_eval_items
from huatuo_o1.records import OPTIONS, QUESTION, InputError

WINDOW = 64
_BASE = 0x9E3779B97F4A7C15  # odd, so it has an inverse mod 2^64
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)
_BATCH_CHARS = 1 << 22  # characters hashed per numpy batch: bounds memory (a few 8-byte arrays of this length)


# CJK punctuation, ideographs (extension A and the basic block) and full-width forms.
CJK_RANGES = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_SPACE_BESIDE_CJK = re.compile(f"(?<=[{CJK_RANGES}]) | (?=[{CJK_RANGES}])")


def nfkc_lower_single_spaced(text):
    """NFKC, lower case, whitespace runs collapsed to one space (none beside a CJK character), stripped."""
    spaced = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    return spaced if spaced.isascii() else _SPACE_BESIDE_CJK.sub("", spaced)  # ASCII text has no CJK to look for


def too_short(text, window=WINDOW):
    """True when `text` cannot hold a window even before normalisation (which never lengthens ASCII text)."""
    return len(text) < window and text.isascii()


class _Powers:
    """B^k and B^-k mod 2^64 for k < n, grown on demand."""

    def __init__(self):
        self.up = self.down = np.ones(1, dtype=np.uint64)

    def get(self, n):
        if len(self.up) < n:
            size = max(n, _BATCH_CHARS + (1 << 16))  # one batch and its last text, usually
            with np.errstate(over="ignore"):
                self.up = np.cumprod(np.full(size, _BASE, dtype=np.uint64)) * np.uint64(_BASE_INVERSE)
                self.down = np.cumprod(np.full(size, _BASE_INVERSE, dtype=np.uint64)) * np.uint64(_BASE)
        return self.up[:n], self.down[:n]


_POWERS = _Powers()


@dataclass
class WindowBatch:
    """The windows of some texts (those long enough), hashed: `hashes[k]` is the window at `starts[k]`."""

    texts: np.ndarray  # indices of the batch's texts in the caller's list
    offsets: np.ndarray  # global position of each of those texts' first character
    hashes: np.ndarray
    starts: np.ndarray

    def locate(self, starts):
        """(index of the text in the caller's list, position in that text) of global window starts."""
        which = np.searchsorted(self.offsets, starts, side="right") - 1
        return self.texts[which], starts - self.offsets[which]


def _batches(texts, window):
    """Indices of the texts long enough to hold a window, in groups of about _BATCH_CHARS characters."""
    group, size = [], 0
    for index, text in enumerate(texts):
        if len(text) >= window:
            group.append(index)
            size += len(text)
            if size >= _BATCH_CHARS:
                yield group
                group, size = [], 0
    if group:
        yield group


def window_hashes(texts, window=WINDOW):
    """Yield a WindowBatch per group of texts: one hash per window lying wholly inside one text."""
    for group in _batches(texts, window):
        joined = "".join(texts[i] for i in group)
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = len(codes)
        up, down = _POWERS.get(n + 1)
        with np.errstate(over="ignore"):
            prefix = np.zeros(n + 1, dtype=np.uint64)
            np.cumsum(codes * up[:n], out=prefix[1:])
            hashes = (prefix[window:] - prefix[:-window]) * down[: n - window + 1]  # sum of codes[s+j] * B^j
        lengths = np.fromiter((len(texts[i]) for i in group), dtype=np.int64, count=len(group))
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        valid = np.ones(n - window + 1, dtype=bool)
        for end in (offsets + lengths)[:-1].tolist():  # windows running into the next text
            valid[end - window + 1 : end] = False
        starts = np.flatnonzero(valid)
        yield WindowBatch(np.asarray(group, dtype=np.int64), offsets, hashes[starts], starts)


@dataclass
class EvalText:
    source: str  # benchmark, e.g. MedQA_USLME_test
    item: int  # index of the item within its source
    field: str  # "question" or "option B"
    text: str  # normalised


@dataclass
class Overlap:
    """A training text sharing a window with an evaluation text."""

    field: str  # the training item's field
    eval_source: str
    eval_item: int
    eval_field: str
    text: str  # the whole common stretch around the first shared window (normalised)


@dataclass
class Contamination:
    """The overlaps of one training item: `sources` are the benchmarks it shares a window with."""

    sources: list = field(default_factory=list)
    overlaps: list = field(default_factory=list)


class EvalIndex:
    """All WINDOW-character windows of the evaluation texts, for fast look-up of training texts.

    stock_phrase_threshold: a window occurring in at least this many distinct evaluation texts is stock
    exam phrasing ("which of the following is the most appropriate next step in management?" is 71
    characters), and no window touching such a stretch counts; 0 counts every window (the paper's rule).
    """

    def __init__(self, eval_texts, window=WINDOW, stock_phrase_threshold=0):
        self.texts, self.window, self.stock_phrase_threshold = eval_texts, window, stock_phrase_threshold
        self.sources = sorted({t.source for t in eval_texts})
        if len(self.sources) > 63:
            raise InputError(f"at most 63 evaluation sources can be told apart, found {len(self.sources)}")
        hashes, owner, start = [], [], []
        for batch in window_hashes([t.text for t in eval_texts], window):
            text_index, position = batch.locate(batch.starts)
            hashes.append(batch.hashes), owner.append(text_index), start.append(position)
        empty = np.zeros(0, dtype=np.int64)
        hashes = np.concatenate(hashes) if hashes else empty.astype(np.uint64)
        owner, start = (np.concatenate(owner), np.concatenate(start)) if owner else (empty, empty)
        self.windows_indexed = len(hashes)
        self.stock_windows = 0
        if stock_phrase_threshold > 0 and len(hashes):
            keep = self._outside_stock_phrases(hashes, owner, start)
            hashes, owner, start = hashes[keep], owner[keep], start[keep]
        order = np.argsort(hashes, kind="stable")  # windows come in text order, so owners stay sorted within a hash
        hashes, self._owner, self._start = hashes[order], owner[order], start[order]
        new = np.ones(len(hashes), dtype=bool)
        new[1:] = hashes[1:] != hashes[:-1]
        self._first = np.flatnonzero(new)
        self._end = np.append(self._first[1:], len(hashes)).astype(np.int64)
        self._keys = hashes[self._first]
        source_bit = np.array([1 << self.sources.index(t.source) for t in eval_texts], dtype=np.int64)
        self._masks = np.bitwise_or.reduceat(source_bit[self._owner], self._first) if len(self._first) else empty
        # Two bitmaps on two disjoint slices of the hash bits, ~5% set each: a window absent from the
        # index passes both in ~1 case of 400, and only those reach the binary search.
        bits = min(26, max(16, (len(self._keys) * 20).bit_length()))
        self._mask = np.uint64((1 << bits) - 1)
        self._shifts = (np.uint64(64 - bits), np.uint64(64 - 2 * bits))
        self._bitmaps = []
        for shift in self._shifts:
            bitmap = np.zeros(1 << bits, dtype=bool)
            bitmap[(self._keys >> shift) & self._mask] = True
            self._bitmaps.append(bitmap)

    def _outside_stock_phrases(self, hashes, owner, start):
        """Mask of the windows that touch no character covered by a stock window."""
        order = np.argsort(hashes, kind="stable")
        h, o = hashes[order], owner[order]
        new_hash = np.ones(len(h), dtype=bool)
        new_hash[1:] = h[1:] != h[:-1]
        new_pair = new_hash.copy()
        new_pair[1:] |= o[1:] != o[:-1]
        first = np.flatnonzero(new_hash)
        distinct = np.add.reduceat(new_pair.astype(np.int64), first)
        self.stock_windows = int((distinct >= self.stock_phrase_threshold).sum())
        is_stock = np.empty(len(h), dtype=bool)
        is_stock[order] = np.repeat(distinct >= self.stock_phrase_threshold, np.diff(np.append(first, len(h))))
        lengths = np.array([len(t.text) for t in self.texts], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        begin = offsets[owner] + start
        size = offsets[-1] + 1
        opened = np.bincount(begin[is_stock], minlength=size) - np.bincount(
            begin[is_stock] + self.window, minlength=size
        )
        stock_chars_before = np.concatenate(([0], np.cumsum(np.cumsum(opened)[:-1] > 0)))  # per global position
        return stock_chars_before[begin + self.window] == stock_chars_before[begin]

    def _lookup(self, hashes):
        """(positions in `hashes`, index into self._keys) of the hashes that are in the index."""
        candidates = np.flatnonzero(self._bitmaps[0][hashes >> self._shifts[0]])  # the top bits: no mask needed
        candidates = candidates[self._bitmaps[1][(hashes[candidates] >> self._shifts[1]) & self._mask]]
        if not len(candidates):
            return candidates, candidates
        at = np.searchsorted(self._keys, hashes[candidates])
        at[at == len(self._keys)] = 0
        found = self._keys[at] == hashes[candidates]
        return candidates[found], at[found]

    def _confirm(self, text, at, key, source):
        """(evaluation text, common stretch) for an evaluation text of `source` that really holds
        text[at:at+window]; None on a hash collision."""
        piece = text[at : at + self.window]
        for k in range(self._first[key], self._end[key]):
            target = self.texts[self._owner[k]]
            begin = int(self._start[k])
            if target.source != source or target.text[begin : begin + self.window] != piece:
                continue
            left, right, end = at, at + self.window, begin + self.window
            while left > 0 and begin > 0 and text[left - 1] == target.text[begin - 1]:
                left, begin = left - 1, begin - 1
            while right < len(text) and end < len(target.text) and text[right] == target.text[end]:
                right, end = right + 1, end + 1
            return target, text[left:right]
        return None

    def check(self, texts):
        """texts: list of (item_id, field, normalised text). Returns {item_id: Contamination} for the items found."""
        found = {}
        for batch in window_hashes([t[2] for t in texts], self.window):
            hit, keys = self._lookup(batch.hashes)
            if not len(hit):
                continue
            text_hit, start_hit = batch.locate(batch.starts[hit])
            mask_hit = self._masks[keys]
            # Hits grouped by (text, set of benchmarks holding the window), in position order: a copied
            # question gives hundreds of hits but one group, which its first hit normally confirms.
            order = np.lexsort((start_hit, mask_hit, text_hit))
            text_hit, key_hit, start_hit, mask_hit = text_hit[order], keys[order], start_hit[order], mask_hit[order]
            boundary = np.ones(len(order), dtype=bool)
            boundary[1:] = (text_hit[1:] != text_hit[:-1]) | (mask_hit[1:] != mask_hit[:-1])
            group_starts = np.flatnonzero(boundary).tolist()
            for g0, g1 in zip(group_starts, group_starts[1:] + [len(order)]):
                item_id, field_name, text = texts[int(text_hit[g0])]
                mask = int(mask_hit[g0])
                entry = found.get(item_id) or Contamination()
                for source in (s for bit, s in enumerate(self.sources) if mask >> bit & 1):
                    if any(o.field == field_name and o.eval_source == source for o in entry.overlaps):
                        continue
                    for j in range(g0, g1):
                        confirmed = self._confirm(text, int(start_hit[j]), int(key_hit[j]), source)
                        if confirmed is not None:
                            target, stretch = confirmed
                            entry.overlaps.append(Overlap(field_name, source, target.item, target.field, stretch))
                            if source not in entry.sources:
                                entry.sources.append(source)
                            found[item_id] = entry
                            break
        return found


def eval_texts(paths, window=WINDOW):
    """The evaluation questions and option texts of the evaluation files that can hold a window, normalised."""
    texts = []
    for path in paths:
        for item in load_eval_items(path):
            index = int(item["id"].rsplit("/", 1)[1])
            named = [("question", str(item[QUESTION]))]
            named += [(f"option {letter}", str(text)) for letter, text in item[OPTIONS].items()]
            texts += [
                EvalText(item["source"], index, name, nfkc_lower_single_spaced(text))
                for name, text in named
                if not too_short(text, window)
            ]
    return texts


def training_texts(rows, fields, window=WINDOW):
    """(row number, field, normalised text) for every field of `fields` a row has; a dict or list field
    (the options) gives one text per entry, named "options.B" or "options.1"; short texts are skipped."""
    texts = []
    for number, row in enumerate(rows):
        for key in fields:
            value = row.get(key)
            if isinstance(value, dict):
                named = [(f"{key}.{letter}", str(v)) for letter, v in value.items()]
            elif isinstance(value, list):
                named = [(f"{key}.{i}", str(v)) for i, v in enumerate(value)]
            else:
                named = [] if value is None else [(key, str(value))]
            texts.extend(
                (number, name, nfkc_lower_single_spaced(text)) for name, text in named if not too_short(text, window)
            )
    return texts
