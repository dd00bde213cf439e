"""Person tags from a Chinese word segmenter (jieba 0.42.1, part-of-speech tag ``nr``).

The rule layer finds names after cues (患者张伟, 王主任, 张伟，男，45岁); the segmenter finds
names that have none ("今日由刘洋陪同来诊", "孙婷婷签字同意手术"). jieba's ``nr`` tag alone is far
too loose for clinical text (it tags 柴胡, 白蛋白, 查体, 甘精 in 甘精胰岛素, 伍德灯 ...), so a word
counts only when it also looks like a person name: a listed surname (one that is also an
everyday word, like 黄 or 高, only next to a word that takes a person), a given name of one or
two characters that are not clinical suffixes, not in the clinical stop list, not glued to a
drug or herbal suffix, and standing where a name stands (clause edge, or next to a word that
takes a person: 陪同, 签字, 由, 告知 ...). A word jieba did not tag needs a person word on
both sides (one, when it was joined from a lone surname and its given name) and must not be an
everyday dictionary word (由母亲陪同).

Names jieba tags as something else (曾刚 an adverb, 包洋 a place) or splits (金志|强) are taken
when they fill a person slot exactly: a surname and one or two common given-name characters
between the clause start (or 由, 告知 ...) and a verb whose subject is a person (签字, 陪同,
否认 ...). The word lists are in ``lexicon.py``.

jieba ships its dictionary and HMM tables inside the package: nothing is downloaded. The
dictionary is loaded once per process, lazily, on the first clause that needs it (1-2.5 s on
the development machine); its marshal cache in the temporary directory is never read or
written (it would be code loaded from a world-writable place).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from .lexicon import (
    AMBIGUOUS_SURNAMES,
    COMPOUND_SURNAMES,
    GIVEN_NAME_CHARS,
    SEGMENTER_NAME_AFTER,
    SEGMENTER_NAME_BEFORE,
    SEGMENTER_NOT_NAME_CHARS,
    SEGMENTER_NOT_NAMES,
    SEGMENTER_SUFFIX_CHARS,
    SINGLE_SURNAMES,
    SLOT_NAME_AFTER,
    SLOT_NAME_BEFORE,
    ZH_NAME_CUES,
    ZH_NAME_TITLES,
)

CJK_RUN = re.compile(r"[\u4e00-\u9fff]{2,}")

# A cheap necessary condition for any name the guards below accept: a surname at the start of
# the clause or after a word that takes a person, or one followed within 1-3 characters by
# such a word or by the end of the clause. Clauses without one are not segmented.
_SURNAME_CHARS = SINGLE_SURNAMES | {s[0] for s in COMPOUND_SURNAMES}
_SURNAME_CLASS = "[" + "".join(sorted(_SURNAME_CHARS)) + "]"
_BEFORE_ALT = "|".join(sorted(SEGMENTER_NAME_BEFORE, key=len, reverse=True))
_AFTER_ALT = "|".join(sorted(SEGMENTER_NAME_AFTER, key=len, reverse=True))
_CANDIDATE = re.compile(
    rf"(?:^|{_BEFORE_ALT}){_SURNAME_CLASS}|{_SURNAME_CLASS}[\u4e00-\u9fff]{{1,3}}(?:{_AFTER_ALT}|$)"
)
_lock = threading.Lock()
_tokenizer: Any = None


def _posseg() -> Any:
    """The process-wide jieba POS tokenizer, built on first use."""
    global _tokenizer
    if _tokenizer is None:
        with _lock:
            if _tokenizer is None:
                import jieba
                import jieba.posseg  # loads the tag table of the packaged dictionary

                jieba.setLogLevel(logging.WARNING)
                base = jieba.dt
                with base.lock:
                    if not base.initialized:
                        # Build the prefix dictionary directly: Tokenizer.initialize() would
                        # load (and write) a marshal cache under the shared temporary directory.
                        base.FREQ, base.total = base.gen_pfdict(base.get_dict_file())
                        base.initialized = True
                _tokenizer = jieba.posseg.dt
    return _tokenizer


def _surname_len(word: str, ambiguous_ok: bool) -> int:
    if word[:2] in COMPOUND_SURNAMES:
        return 2
    if word[0] in SINGLE_SURNAMES and (ambiguous_ok or word[0] not in AMBIGUOUS_SURNAMES):
        return 1
    return 0


def _looks_like_name(word: str, ambiguous_ok: bool) -> bool:
    sur = _surname_len(word, ambiguous_ok)
    if not sur or not 1 <= len(word) - sur <= 2:
        return False
    if word in SEGMENTER_NOT_NAMES or word[:2] in SEGMENTER_NOT_NAMES:
        return False  # 柴胡, and 阿昔洛|韦 (阿昔洛韦), 丁香油
    given = word[sur:]
    return not any(c in SEGMENTER_NOT_NAME_CHARS for c in given)


# A dictionary word this frequent is an everyday word, not a name (平安, 孙子, 母亲, 国家); jieba
# counts names like 方平 (24) or 莫丹 (2) far lower.
_EVERYDAY_WORD_COUNT = 50


def _everyday_word(word: str) -> bool:
    return bool(_posseg().tokenizer.FREQ.get(word, 0) >= _EVERYDAY_WORD_COUNT)


# One-character words that jieba sometimes glues in front of a name (由江娜/nr).
_GLUE = "由与和及请给向对让叫找经据"


def _tagged(clause: str) -> list[tuple[str, str]]:
    """(word, part-of-speech) for the words of ``clause``.

    Segmenting with jieba's plain HMM cut and tagging dictionary words from its tag table is
    ~14x faster than ``posseg.cut`` over the whole clause; only unknown words shaped like a
    name (2-4 characters starting with a surname, or 由/与… + surname) and standing where a
    name could be accepted go through the part-of-speech HMM."""
    pos = _posseg()
    tags = pos.word_tag_tab
    plain = list(pos.tokenizer.cut(clause, HMM=True))
    out: list[tuple[str, str]] = []
    for i, word in enumerate(plain):
        flag = tags.get(word)
        if flag is not None:
            out.append((word, flag))
            continue
        before = i > 0 and plain[i - 1] in SEGMENTER_NAME_BEFORE
        after = i + 1 < len(plain) and any(plain[i + 1].startswith(w) for w in SEGMENTER_NAME_AFTER)
        edge = i == 0 or i == len(plain) - 1
        # The HMM costs ~0.8 ms a word: run it only where its tag decides (a word between two
        # person words is taken without one).
        if _name_shaped(word) and (edge or before or after or word[0] in _GLUE):
            if before and after:
                out.append((word, "x"))
            else:
                out.extend((w.word, w.flag) for w in pos.cut(word))
        else:
            out.append((word, "x"))  # unknown, and not a name here
    return out


def _name_shaped(word: str) -> bool:
    return 2 <= len(word) <= 4 and (
        word[0] in _SURNAME_CHARS or (word[0] in _GLUE and word[1] in _SURNAME_CHARS)
    )


# Tags that never start or continue a name (punctuation, numbers, English, function words).
_NOT_NAME_TAGS = ("x", "m", "eng", "p", "c", "u", "uj", "ul", "d", "v", "f", "t", "r", "q")


def _words(clause: str) -> list[tuple[str, bool, bool]]:
    """jieba's words as (word, tagged ``nr``, joined from a lone surname + given name).

    jieba often splits a name into a lone surname and its given name, with noisy tags on
    either half (胡/nr 丽丽/nr, 李/nr 桂兰/ns, 孙/zg 婷婷/z, 许/m 志强/nrfg): the halves are
    joined back when the first is a surname character."""
    raw = _tagged(clause)
    out: list[tuple[str, bool, bool]] = []
    i = 0
    while i < len(raw):
        word, flag = raw[i]
        if (
            len(word) == 1
            and word in SINGLE_SURNAMES
            and i + 1 < len(raw)
            and (
                word not in AMBIGUOUS_SURNAMES
                or flag.startswith("nr")
                or raw[i + 1][1].startswith("nr")
            )
            and 1 <= len(raw[i + 1][0]) <= 2
            and raw[i + 1][1] not in _NOT_NAME_TAGS
            and raw[i + 1][0] not in ZH_NAME_TITLES
            and raw[i + 1][0] not in ZH_NAME_CUES
        ):
            tagged = flag.startswith("nr") or raw[i + 1][1].startswith("nr")
            out.append((word + raw[i + 1][0], tagged, True))
            i += 2
            continue
        if flag.startswith("nr") and len(word) >= 3 and word[0] in _GLUE:
            out.append((word[0], False, False))
            word = word[1:]
        out.append((word, flag.startswith("nr"), False))
        i += 1
    return out


@lru_cache(maxsize=8192)
def _clause_names(clause: str) -> tuple[tuple[int, int], ...]:
    words = _words(clause)
    out: list[tuple[int, int]] = []
    pos = 0
    for i, (word, tagged, joined) in enumerate(words):
        start, pos = pos, pos + len(word)
        if len(word) < 2:
            continue
        nxt = words[i + 1][0] if i + 1 < len(words) else ""
        prev = words[i - 1][0] if i else ""
        if nxt[:1] in SEGMENTER_SUFFIX_CHARS:
            continue  # 甘精|胰岛素, 柴胡|疏肝散, 柯萨奇|病毒
        before = prev in SEGMENTER_NAME_BEFORE
        after = any(nxt.startswith(w) for w in SEGMENTER_NAME_AFTER)
        at_edge = not prev or not nxt
        # A person tag needs a name's position (clause edge or a word that takes a person);
        # a word jieba did not tag needs a person word on both sides, or on one side when it
        # was a lone surname + given name. Surnames that are everyday words (黄, 高, 方) count
        # only with a person word next to them.
        if tagged:
            ok = _looks_like_name(word, ambiguous_ok=before or after) and (
                at_edge or before or after
            )
        else:
            ok = (
                _looks_like_name(word, ambiguous_ok=before and after)
                and ((before and after) or (joined and (before or after)))
                and not _everyday_word(word)  # 由母亲陪同, 由司机陪同
            )
        if ok:
            out.append((start, pos))
    return tuple(out)


# A name that fills a person slot exactly: surname + 1-2 given-name characters between the
# clause start (or 由, 告知 ...) and 签字, 陪同, 否认 ... (or the clause end after 由, 告知 ...).
_GIVEN_CLASS = "[" + "".join(sorted(GIVEN_NAME_CHARS - SEGMENTER_NOT_NAME_CHARS)) + "]"
_SURNAME_ALT = "|".join(sorted(COMPOUND_SURNAMES)) + "|" + _SURNAME_CLASS
_SLOT_AFTER_ALT = "|".join(sorted(SLOT_NAME_AFTER, key=len, reverse=True))
_SLOT_BEFORE_LOOK = "|".join(f"(?<={w})" for w in sorted(SLOT_NAME_BEFORE))
assert SLOT_NAME_BEFORE <= SEGMENTER_NAME_BEFORE  # or _CANDIDATE would skip the clause
_SLOT = re.compile(
    rf"^(?:{_SURNAME_ALT}){_GIVEN_CLASS}{{1,2}}(?={_SLOT_AFTER_ALT})"
    rf"|(?:{_SLOT_BEFORE_LOOK})(?:{_SURNAME_ALT}){_GIVEN_CLASS}{{1,2}}(?={_SLOT_AFTER_ALT}|$)"
)


def _slot_names(run: str) -> list[tuple[int, int]]:
    """Names that jieba tags as something else (曾刚/d, 包洋/ns, 金志|强) in a person slot.

    Each character of the given name must be a common given-name character, and the word
    must be name-shaped (``_looks_like_name``) and not an everyday dictionary word."""
    out = []
    for m in _SLOT.finditer(run):
        word = m.group(0)
        if _looks_like_name(word, ambiguous_ok=True) and not _everyday_word(word):
            out.append(m.span())
    return out


def segmenter_person_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of words in ``text`` that jieba tags as person names and that pass the
    guards above, and of names in a person slot (``_slot_names``). Only CJK runs holding a
    usable surname are segmented."""
    for m in CJK_RUN.finditer(text):
        run = m.group(0)
        if not _CANDIDATE.search(run):
            continue
        for s, e in (*_clause_names(run), *_slot_names(run)):
            yield m.start() + s, m.start() + e


def _dictionary_word(word: str) -> bool:
    """Whether ``word`` is a word of jieba's dictionary (prefix-only entries have count 0)."""
    return bool(_posseg().tokenizer.FREQ.get(word))


def tagged_name_at(text: str, start: int) -> int | None:
    """End of a name that starts at ``start``, when jieba tags the word there as a person and
    a name's position follows it (the clause end, or a word like 否认, 诉, 男). Lets a cue
    accept a surname that is also an everyday word (患者于晨，… but not 患者于晨起时…)."""
    first = start
    while first > 0 and "\u4e00" <= text[first - 1] <= "\u9fff":
        first -= 1
    m = CJK_RUN.match(text, first)
    if m is None or m.end() <= start:
        return None
    run = m.group(0)
    pos = m.start()
    words = _words(run)

    def ends_clause(j: int) -> bool:
        nxt = words[j][0] if j < len(words) else ""
        return not nxt or nxt[:1] in "男女" or any(nxt.startswith(w) for w in SEGMENTER_NAME_AFTER)

    for i, (word, tagged, _) in enumerate(words):
        if pos == start:
            # jieba's HMM makes a word of an unknown name without tagging it (患者高东，): a
            # word its dictionary does not hold counts like a tagged one; a dictionary word
            # does not (患者高热，, 患者黄疸，).
            named = tagged or not _dictionary_word(word)
            if named and ends_clause(i + 1) and _looks_like_name(word, ambiguous_ok=True):
                return pos + len(word)
            # Or it cuts a surname that is also a word off its given name (患者任|建平，:
            # 建平 is a place): the two together, ending the clause, are a name when they
            # are shaped like one and not a word of their own (患者任|意，… stays).
            if len(word) == 1 and i + 1 < len(words):
                joined = word + words[i + 1][0]
                if (
                    ends_clause(i + 2)
                    and _looks_like_name(joined, ambiguous_ok=True)
                    and not _dictionary_word(joined)
                ):
                    return pos + len(joined)
            return None
        pos += len(word)
        if pos > start:
            return None
    return None
