"""The grounding check: is every checkable claim of an answer in the text the agent retrieved?

`check(answer, evidence, question=..., cited=...)` extracts the answer's checkable claims and looks for
each in the retrieved chunks, cited chunks first:

- numbers, with or without units, currencies and multipliers (`4,000 hours`, `$35.00`, `2.4 million euros`,
  `1e-8`, `7.2%`); number words count as numbers (`three` = 3) in both directions; a unit, when the answer
  gives one, must stand by the number in the chunk (`42 psi` is not supported by `42 bar`); "about 185
  million" accepts what rounds to it;
- dates (`12 March 2029`, `March 12, 2029`, `2029-03-12`, `March 2029`) compared as dates;
- versions (`1.2.3`, `v16`), identifiers and code-like tokens (`E-117`, `HT-220`, `work_mem`,
  `config.yaml`, `--strict`, URLs), page references (`page 9`, checked against the chunks' pages);
- quoted strings (`"..."`, backticks), as a run of words;
- capitalized names (`Ingrid Solberg`, `Norrvik Hydraulics`, acronyms); a single capitalized word at the
  start of a sentence is not taken for a name.

Matching ignores case, accents, Unicode dash and quote variants, and thousands separators. Text of the
question never counts as support; when the answer declines (`is_abstention`), claims it merely repeats
from the question are not checked, since it asserts none of them. Prose with no such claims is grounded.

A claim found in the text must also answer the question (unless the answer declines); `mismatched` says why not:
- a value at all: the question asks for a number, a date, a year, a code or a name ("who", "in which city") and
  the answer gives none of its own (a year is no number: "the outlook for 2030" gives no percentage);
- the quantity: the question asks for a kind of quantity (a unit it names without a number, "in kilograms",
  "how many months", or a word: weight, pressure, price, power...) and every number of the answer has a unit of
  another kind ("42 bar" for a weight); a year or a percentage may be the answer, and a question asking for more
  than one thing ("and", "or", a comma) is not judged; a bare number ("30") has the kinds the passages give it
  with ("30 days"), and is mismatched when none is the kind asked and no passage gives it bare;
- the code family: the question names a code (`Hydra-5`) and every passage holding the answer's values names
  another member of its family (`Hydra-7`) and not it; a passage that names no member is no evidence either way,
  except for a value asked of a code the question asks about ("the threshold of error code E-117"): it comes
  from a passage naming the code, where one was retrieved;
- our ids: a chunk id is never text of the documents; given as a value it is mismatched, given as a citation
  (after `chunk_id:`, `chunk ids`, `source:`, in brackets) it is no claim.
- the question's anchors: a code or year the question asks about (`E-309`, `2026`) that no retrieved passage
  holds; what the passages say of other things does not answer it (names are no anchors: a report's pages seldom
  repeat the company's name).
- what is asked about: a year or a name asked ("in which year was it founded", "in which town is Pump School
  held") is given from a passage holding a word of the question besides its claims ("founded") and its names
  that few passages hold ("Pump School"); one found only in other passages answers another question.
- what a count counts: a number the answer counts something with ("two assembly lines") that every retrieved
  sentence holding it gives to another word ("ran two shifts", "every two years").
What it cannot see: a true value attached to the wrong subject when the passage names the subject too or no
code tells them apart ("the Hydra-5 is rated for 42 bar" beside "the Hydra-5 was limited to 35 bar"), a value of
the right kind about another attribute (the seal interval given for the warranty), paraphrased claims without
numbers or names, and reasoning errors.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property, lru_cache
from decimal import Decimal, InvalidOperation
from typing import Iterable, Mapping, Sequence

from pipeline.types import Hit

__all__ = ["DECLINE", "Claim", "Grounding", "asked_dimensions", "check", "explain", "extract_claims",
           "is_abstention", "look_again_note", "normalize", "stem", "strict_abstention"]

# The decline the one more look offers, to send as it is (the 1.5B model copies what it is shown, session 15:
# the system prompt's own rule became its answer).
DECLINE = "The documents do not answer this question."
SHOWN_CLAIMS = 8  # at most this many unsupported claims are named to the model and in an abstention
CLAIM_CHARS = 80  # longest claim text kept

# ------------------------------------------------------------------------------------ normalization

_TRANSLIT = str.maketrans({"ø": "o", "Ø": "O", "æ": "ae", "Æ": "Ae", "đ": "d", "Đ": "D", "ł": "l", "Ł": "L",
                           "þ": "th", "Þ": "Th", "œ": "oe", "Œ": "Oe", "ı": "i"})
_DASHES = re.compile("[\u2010-\u2015\u2212\ufe58\ufe63\uff0d]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"'})
_GROUP_SPACE = re.compile(r"(?<=\d)[\u00a0\u2007\u2009\u202f](?=\d{3}(?!\d))")  # 4 000 with a thin space


def normalize(text: str) -> str:
    """Comparable text, case kept: NFKC, accents dropped, one dash and one pair of quotes, `4 000` -> `4,000`."""
    text = _GROUP_SPACE.sub(",", text)
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLIT).translate(_QUOTES)
    text = _DASHES.sub("-", text)
    decomposed = unicodedata.normalize("NFKD", text)
    text = unicodedata.normalize("NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))
    return "".join(ch if len(ch.casefold()) == 1 else ch.casefold() for ch in text)  # casefold keeps positions


def _fold(text: str) -> str:
    return normalize(text).casefold()


def stem(word: str) -> str:
    """A light stem, the same for `bearing`/`bearings`, `unit`/`units` and `replace`/`replaced`/`replaces`."""
    def cut(w: str, suffix: str) -> str:
        return w[:-len(suffix)] if w.endswith(suffix) and len(w) - len(suffix) >= 3 else w

    word = cut(word, "s") if not word.endswith("ss") else word
    for suffix in ("ing", "ed"):
        word = cut(word, suffix)
    return cut(word, "e")


def _words(folded: str) -> list[str]:
    return re.findall(r"[^\W_]+", folded)


# ------------------------------------------------------------------------------------ abstention

_ABSTAIN = re.compile("|".join([
    r"\b(?:do|does|did|can|could|was|am|is|are)\s*(?:not|n't)\s+(?:find|locate|determine|answer|know|"
    r"say|tell|contain|mention|state|include|specify|provide|appear|exist)",
    r"\b(?:cannot|unable to|not able to)\s+(?:find|locate|determine|answer|know|say|tell)",
    r"\bnot\s+(?:\w+ly\s+)?(?:mentioned|stated|specified|found|covered|provided|available|given|present|included|"
    r"addressed|listed)\b",
    r"\b(?:no|not enough|insufficient)\s+(?:information|mention|evidence|data|record|details|answer)\b",
    r"\bunanswerable\b",
]), re.IGNORECASE)


def is_abstention(answer: str) -> bool:
    """The answer declines: says the archive does not hold it, that it cannot be found, and the like."""
    return bool(_ABSTAIN.search(normalize(answer or "")))


# ------------------------------------------------------------------------------------ vocabularies

_UNITS: dict[str, str] = {}
for _canon, _names in {
    "bar": "bar bars mbar", "psi": "psi", "pa": "pa pascal pascals", "kpa": "kpa", "mpa": "mpa",
    "hour": "h hr hrs hour hours", "minute": "min mins minute minutes", "second": "s sec secs second seconds",
    "ms": "ms millisecond milliseconds", "day": "day days", "week": "week weeks", "month": "month months",
    "year": "year years yr yrs", "celsius": "°c celsius degc", "fahrenheit": "°f fahrenheit degf",
    "kelvin": "kelvin", "degree": "° degree degrees", "percent": "% percent pct", "usd": "$ usd dollar dollars us$",
    "eur": "€ eur euro euros", "gbp": "£ gbp", "nok": "nok kr krone kroner", "sek": "sek", "dkk": "dkk",
    "chf": "chf", "jpy": "¥ jpy yen", "mm": "mm millimetre millimetres millimeter millimeters",
    "cm": "cm centimetre centimetres centimeter centimeters", "m": "m metre metres meter meters",
    "km": "km kilometre kilometres kilometer kilometers", "in": "inch inches", "ft": "ft foot feet",
    "kg": "kg kilogram kilograms kilo kilos", "g": "g gram grams", "mg": "mg milligram milligrams",
    "t": "t tonne tonnes ton tons", "lb": "lb lbs", "l": "l litre litres liter liters", "ml": "ml millilitre "
    "millilitres milliliter milliliters", "m3": "m3 m³ cubic", "gal": "gal gallon gallons", "w": "w watt watts",
    "kw": "kw kilowatt kilowatts", "mw": "mw megawatt megawatts", "v": "v volt volts", "a": "a amp amps ampere "
    "amperes", "hz": "hz hertz", "khz": "khz", "rpm": "rpm r/min revolution revolutions", "b": "b byte bytes",
    "kb": "kb kilobyte kilobytes", "mb": "mb megabyte megabytes", "gb": "gb gigabyte gigabytes",
    "tb": "tb terabyte terabytes", "kib": "kib",
    "mib": "mib", "gib": "gib", "tib": "tib", "m3/h": "m3/h m³/h", "l/min": "l/min", "db": "db dba decibel decibels",
}.items():
    for _name in _names.split():
        _UNITS[_name] = _canon
# "80 degrees" is met by "80 °C"; "30 cubic metres (per hour)" by "30 m³/h"
_COMPATIBLE = {"degree": {"degree", "celsius", "fahrenheit", "kelvin"}, "m3": {"m3", "m3/h"}}
_CURRENCY_SYMBOLS = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy"}
_CURRENCY_CODES = {"usd", "eur", "gbp", "nok", "sek", "dkk", "chf", "jpy", "us$"}
_CURRENCY_BEFORE = re.compile(r"(?:([$€£¥])|\b(" + "|".join(map(re.escape, sorted(_CURRENCY_CODES))) + r"))\s?$")
_MULTIPLIERS = {"thousand": 10 ** 3, "million": 10 ** 6, "mn": 10 ** 6, "billion": 10 ** 9, "bn": 10 ** 9,
                "trillion": 10 ** 12}
_CONNECTORS = {"to", "and", "or", "-", "x", "by"}
_APPROX = re.compile(r"\b(?:about|approximately|approx|around|roughly|nearly|almost|some|circa|ca|~)\W*$")

_ONES = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                    "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10 ** 6, "billion": 10 ** 9}

_MONTHS = {name: i for i, names in enumerate(
    ["jan january", "feb february", "mar march", "apr april", "may", "jun june", "jul july", "aug august",
     "sep sept september", "oct october", "nov november", "dec december"], start=1) for name in names.split()}
_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|" \
         r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_WEEKDAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}

# Words that start sentences or sit capitalized in prose without naming anything.
_COMMON = set("""
a an the this that these those it its they them their there here he she his her him we our us you your i my me
in on at by for from to of with without within after before during under over between per as into onto upon
via about above below across against along among around behind beyond near off out since through toward towards
and or but nor so yet then thus hence therefore however also both each every all any some most many much more
less only just even if when whenever while where wherever which who whom whose what why how whether because
although though unless until once yes no not none nothing neither either is are was were be been being am has
have had do does did can could should would will shall may might must let please see note notes answer answers
source sources summary result results based according given regarding unfortunately sorry currently overall
finally first second third next last other another such same own new old one two three four five six seven
eight nine ten several few today now yes ok okay step steps search searched searching looking found
""".split()) | _WEEKDAYS
_TITLES = {"mr", "mrs", "ms", "dr", "prof", "sir", "mx"}
_COMMON_CAPS = {"OK", "AM", "PM", "ID", "FAQ", "NB", "PS", "AI", "LLM", "PDF", "TBD", "N/A"}

# ------------------------------------------------------------------------------------ claims


@dataclass(frozen=True)
class Claim:
    """One checkable statement of the answer: its text (Unicode-normalized) and what kind of thing it is."""

    text: str
    kind: str  # number, date, version, identifier, page, quote, name; answer (the value asked is missing)


@dataclass(frozen=True)
class _Number:
    start: int  # of the claim: a currency before it and a unit after it included
    end: int
    number_end: int  # where the number itself (and its multiplier) ends
    value: Decimal  # with the multiplier applied
    base: Decimal  # as written, before a multiplier
    multiplier: int
    unit: str | None  # the unit next to it (canonical), currency included
    approximate: bool = False


@dataclass(frozen=True)
class _Date:
    year: int | None
    month: int
    day: int | None


_NUM = re.compile(r"(?<![\w.,])(?P<sign>[-+])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
                  r"(?:e(?P<exp>[-+]?\d+))?(?!\d|,\d{3}|\.\d)")
_MULT_AFTER = re.compile(r"(?:\s*(thousand|million|mn|billion|bn|trillion)\b|(k)\b)")
_UNIT_TOKEN = re.compile(r"(\s*)(?:-\s*)?(%|°\s?[cf]?\b|°|[$€£¥]|[a-zµ][a-z0-9µ³/]*|\d[\d,.]*)")
_ORDINAL = re.compile(r"(?:st|nd|rd|th)\b")


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def _unit_tokens(folded: str, end: int, count: int) -> Iterable[tuple[str, bool, int]]:
    """Up to `count` tokens after position `end`: (token, attached to what precedes it, where it ends)."""
    pos = end
    for _ in range(count):
        match = _UNIT_TOKEN.match(folded, pos)
        if not match:
            return
        yield match.group(2).replace(" ", ""), match.group(1) == "", match.end()
        pos = match.end()


def _as_unit(token: str, attached: bool) -> str | None:
    token = token.rstrip(".")
    canon = _UNITS.get(token)
    if canon is None or (len(token) == 1 and token.isalpha() and not attached):
        return None  # a lone letter after a space is a word ("3 a day"), not a unit
    return canon


def _currency_before(folded: str, start: int) -> tuple[str, int] | None:
    """(currency, where its symbol or code starts) when one stands right before position `start`."""
    window = max(0, start - 6)
    match = _CURRENCY_BEFORE.search(folded[window:start])
    if not match:
        return None
    return (_CURRENCY_SYMBOLS[match.group(1)] if match.group(1) else _UNITS[match.group(2)]), window + match.start()


def _claim_unit(folded: str, start: int, end: int) -> tuple[str | None, int, int]:
    """(unit, start, end) of a number as the answer gives it: a currency before, or the first unit after it.

    A range or list between the number and its unit is allowed (`10 to 20 bar`); any other word ends the search.
    """
    currency = _currency_before(folded, start)
    if currency:
        return currency[0], currency[1], end
    for token, attached, token_end in _unit_tokens(folded, end, 4):
        unit = _as_unit(token, attached)
        if unit:
            return unit, start, token_end
        if token not in _CONNECTORS and not token[0].isdigit():
            break
    return None, start, end


def _digit_numbers(folded: str) -> list[_Number]:
    numbers = []
    for match in _NUM.finditer(folded):
        base = _decimal(match.group("num") + (f"e{match.group('exp')}" if match.group("exp") else ""))
        if base is None:
            continue
        if match.group("sign") == "-":
            base = -base
        end = match.end()
        multiplier = 1
        if mult := _MULT_AFTER.match(folded, end):
            multiplier = _MULTIPLIERS[mult.group(1)] if mult.group(1) else 1000
            end = mult.end()
        unit, start, claim_end = _claim_unit(folded, match.start(), end)
        numbers.append(_Number(start, claim_end, end, base * multiplier, base, multiplier, unit,
                               bool(_APPROX.search(folded[max(0, start - 16):start]))))
    return numbers


_NUMBER_WORD = re.compile(r"\b(?:" + "|".join(sorted([*_ONES, *_TENS, *_SCALES], key=len, reverse=True)) + r")\b")


def _word_numbers(folded: str, *, with_one: bool) -> list[_Number]:
    """Numbers written in words: `three`, `twenty-five`, `two hundred`; a lone `one` only `with_one`."""
    numbers = []
    pos = 0
    while first := _NUMBER_WORD.search(folded, pos):
        total, current, words, scan, end = 0, 0, [], first.start(), first.end()
        while word := _NUMBER_WORD.match(folded, scan):
            token = word.group(0)
            if token in _ONES:
                current += _ONES[token]
            elif token in _TENS:
                current += _TENS[token]
            elif token == "hundred":
                current = max(current, 1) * 100
            else:
                total, current = total + max(current, 1) * _SCALES[token], 0
            words.append(token)
            end = word.end()
            joiner = re.match(r"\s+and\s+|[\s-]", folded[end:])
            if not joiner:
                break
            scan = end + joiner.end()
        pos = end
        if (words == ["one"] and not with_one) or words[0] in _SCALES:
            continue  # "one" is a pronoun as often as a number; "million" alone belongs to a digit number
        value = Decimal(total + current)
        unit, start, claim_end = _claim_unit(folded, first.start(), end)
        numbers.append(_Number(start, claim_end, end, value, value, 1, unit))
    return numbers


_DATE_PATTERNS = [
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), "ymd"),
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})(?:,?\s+(\d{{4}}))?\b"), "dmy"),
    (re.compile(rf"\b({_MONTH})\s+(\d{{1,2}})(?:st|nd|rd|th)?(?:,?\s+(\d{{4}}))?\b(?!,\d)"), "mdy"),
    (re.compile(rf"\b({_MONTH})(?:\s+of)?,?\s+(\d{{4}})\b"), "my"),
    (re.compile(r"\b(\d{1,2})[./](\d{1,2})[./](\d{4})\b"), "numeric"),
    (re.compile(r"\b(january|february|march|april|june|july|august|september|october|november|december)\b"), "m"),
]


def _readings(shape: str, groups: tuple[str | None, ...]) -> list[_Date]:
    """The dates a match can mean; a numeric d/m/y date has both readings."""
    def month(name: str | None) -> int:
        return _MONTHS[(name or "").rstrip(".")]

    def year(text: str | None) -> int | None:
        return int(text) if text else None

    g = groups
    if shape == "ymd":
        dates = [_Date(int(g[0] or 0), int(g[1] or 0), int(g[2] or 0))]
    elif shape == "dmy":
        dates = [_Date(year(g[2]), month(g[1]), int(g[0] or 0))]
    elif shape == "mdy":
        dates = [_Date(year(g[2]), month(g[0]), int(g[1] or 0))]
    elif shape == "my":
        dates = [_Date(year(g[1]), month(g[0]), None)]
    elif shape == "numeric":
        a, b = int(g[0] or 0), int(g[1] or 0)
        dates = [_Date(year(g[2]), m, d) for d, m in ((a, b), (b, a))]
    else:
        dates = [_Date(None, month(g[0]), None)]
    return [d for d in dict.fromkeys(dates) if 1 <= d.month <= 12 and (d.day is None or 1 <= d.day <= 31)]


def _dates(folded: str) -> list[tuple[int, int, list[_Date]]]:
    """(start, end, readings) of each date in `folded`, the most specific pattern first."""
    found: list[tuple[int, int, list[_Date]]] = []
    for pattern, shape in _DATE_PATTERNS:
        for match in pattern.finditer(folded):
            if any(start < match.end() and match.start() < end for start, end, _ in found):
                continue
            readings = _readings(shape, match.groups())
            if readings:
                found.append((match.start(), match.end(), readings))
    return sorted(found, key=lambda item: item[0])


_TOKEN = re.compile(r"[^\s\"'`()\[\]{}<>,;!?*]+")
_DOTTED = re.compile(r"^[a-z_][\w-]*(?:\.[a-z_][\w-]*)+$", re.IGNORECASE)
_VERSION = re.compile(r"^(?:v\d+(?:\.\d+)*|\d+(?:\.\d+){2,})$", re.IGNORECASE)
_NUMBER_LIKE = re.compile(r"^[-+$€£¥]?\d[\d,.]*(?:e[-+]?\d+)?(?:-?[a-z%°µ/]+)?$", re.IGNORECASE)


def _identifier_kind(token: str) -> str | None:
    """`version` or `identifier` for a code-like token (`E-117`, `work_mem`, `config.yaml`), else None."""
    if _VERSION.match(token):
        return "version"
    if len(token) < 2 or _NUMBER_LIKE.match(token) or token.casefold() in _UNITS:
        return None  # 42, 4,000-hour, 80°C, 10k, kW: numbers and units, checked as numbers
    letters = any(c.isalpha() for c in token)
    if "://" in token or ("@" in token and "." in token.rsplit("@", 1)[-1]):
        return "identifier"
    if letters and (token.startswith(("/", "~/")) or re.match(r"^--?[a-z][\w-]*$", token, re.IGNORECASE)):
        return "identifier"  # paths and command-line options
    if letters and (any(c.isdigit() for c in token) or "_" in token or "::" in token or token.endswith("()")):
        return "identifier"
    if token[0].islower() and re.search(r"[a-z][A-Z]", token):
        return "identifier"  # camelCase
    if _DOTTED.match(token) and any(len(part) > 1 for part in token.split(".")):
        return "identifier"  # config.yaml, pg_hba.conf; not e.g. or U.S.
    return None


def _is_sentence_start(text: str, start: int) -> bool:
    before = text[:start]
    if re.fullmatch(r"\s*(?:[-*•>#]+|\d+[.)])?\s*[\"'(]*", before.rsplit("\n", 1)[-1]):
        return True
    return bool(re.search(r"[.!?:]\s*[\"'(]*$", before))


_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")


def _names(text: str) -> list[tuple[int, int, str]]:
    """Runs of capitalized words (and acronyms) that look like names: (start, end, text)."""
    names: list[tuple[int, int, str]] = []
    run: list[tuple[int, int, str]] = []

    def close() -> None:
        items = list(run)
        run.clear()
        if not items:
            return
        first = items[0]
        opening = _is_sentence_start(text, first[0])
        while items and (items[0][2].lower() in _COMMON or items[0][2].lower() in _TITLES):
            items.pop(0)
        if len(items) == 1:
            word = items[0][2]
            if word in _COMMON_CAPS or word.lower() in _UNITS:
                return  # "OK", "EUR 2.4 million", "80 degrees Celsius"
            if opening and items[0] is first and not (word.isupper() or re.search(r"[a-z][A-Z]", word)):
                return  # "Replace the seal": a capital at the start of a sentence says nothing
        if items:
            names.append((items[0][0], items[-1][1], text[items[0][0]:items[-1][1]]))

    for match in _WORD.finditer(text):
        word = re.sub(r"'s?$", "", match.group(0))
        if len(word) == 1 or not word[0].isupper():
            close()
            continue
        gap = text[run[-1][1]:match.start()] if run else ""
        if gap.strip(" '") or "\n" in gap:
            close()  # a name is words joined by single spaces

        run.append((match.start(), match.start() + len(word), word))
    close()
    return names


_QUOTED = re.compile(r'"([^"\n]{2,300})"|`([^`\n]{1,300})`|(?<!\w)\'([^\'\n]{2,200})\'(?!\w)')
_PAGE_REF = re.compile(r"\b(?:pages?|pp?\.)\s*(\d+(?:\s*(?:-|to|and|,)\s*\d+)*)", re.IGNORECASE)
_SKIPPED = re.compile(r"\[\d+(?:\s*[,-]\s*\d+)*\]|^\s*\d+[.)](?=\s)", re.MULTILINE)  # [1] markers, list numbers


def _mask(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def extract_claims(answer: str) -> list[Claim]:
    """The checkable claims of `answer`, in the order they appear (each distinct claim once)."""
    return [claim for _, claim, _ in _extract(normalize(answer))]


def _extract(text: str) -> list[tuple[int, Claim, object]]:
    """(position, claim, matcher data) for each claim of normalized `text`."""
    found: list[tuple[int, Claim, object]] = []
    spans: list[tuple[int, int]] = [m.span() for m in _SKIPPED.finditer(text)]

    def take(start: int, end: int, kind: str, data: object) -> None:
        found.append((start, Claim(text[start:end].strip()[:CLAIM_CHARS], kind), data))
        spans.append((start, end))

    for match in _QUOTED.finditer(text):
        inner = next(g for g in match.groups() if g is not None)
        words = _words(_fold(inner))
        if words:
            take(match.start(), match.end(), "quote", words)
        else:
            spans.append(match.span())
    masked = _mask(text, spans)
    for match in _PAGE_REF.finditer(masked):
        for number in re.findall(r"\d+", match.group(1)):
            found.append((match.start(), Claim(f"page {number}", "page"), int(number)))
        spans.append(match.span())
    masked = _mask(text, spans)
    for match in _TOKEN.finditer(masked):
        token = match.group(0).rstrip(".:")
        kind = _identifier_kind(token)
        if kind:
            take(match.start(), match.start() + len(token), kind, token.casefold())
    masked = _mask(text, spans)
    folded = masked.casefold()
    for start, end, readings in _dates(folded):
        take(start, end, "date", readings)
    folded = _mask(text, spans).casefold()
    for number in _digit_numbers(folded):
        if _ORDINAL.match(folded, number.number_end):
            continue
        take(number.start, number.end, "number", number)
    folded = _mask(text, spans).casefold()
    for number in _word_numbers(folded, with_one=False):
        take(number.start, number.end, "number", number)
    for start, end, name in _names(_mask(text, spans)):
        take(start, end, "name", _words(_fold(name)))
    unique: dict[tuple[str, str], tuple[int, Claim, object]] = {}
    for item in sorted(found, key=lambda item: item[0]):
        unique.setdefault((item[1].kind, item[1].text.casefold()), item)
    return list(unique.values())


# ------------------------------------------------------------------------------------ evidence


class _Chunk:
    """One retrieved chunk, indexed for the matchers: folded text, words, numbers, dates, pages. `body` is its own
    text and `setting` its heading and file name (normalized); the matchers see both."""

    def __init__(self, chunk_id: str, text: str, pages: set[int], setting: str = "") -> None:
        self.chunk_id = chunk_id
        self.body, self.setting = normalize(text), normalize(setting)
        self.text = text
        self.folded = _fold(f"{text}\n{setting}" if setting else text)
        self.words = _words(self.folded)
        self.joined = f" {' '.join(self.words)} "
        self.word_set = set(self.words)
        self.pages = pages
        self.numbers: list[tuple[Decimal, Decimal, set[str]]] = []
        self.kinds: dict[Decimal, set[str | None]] = {}  # the kinds of quantity each value is given with (None: bare)
        for number in [*_digit_numbers(self.folded), *_word_numbers(self.folded, with_one=True)]:
            units = self.units_after(number)
            self.numbers.append((number.value, number.base, units))
            if not _REFERENCE_BEFORE.search(self.folded[max(0, number.start - 12):number.start]):  # no page number
                self.kinds.setdefault(number.value, set()).update({_DIMENSION_OF.get(u) for u in units} or {None})
        self.dates = [reading for _, _, readings in _dates(self.folded) for reading in readings]
        self.years = {int(v) for v, _, _ in self.numbers if v == v.to_integral_value() and 1000 <= v <= 2999}

    @cached_property
    def claims(self) -> list[tuple[int, Claim, object]]:
        """The claims of its text (extracted once: the question's are asked for by several rules)."""
        return list(_extract(normalize(self.text)))

    @cached_property
    def stems(self) -> set[str]:
        """The stems of its words (`stem`), heading and file name included."""
        return {stem(word) for word in self.word_set}

    def units_after(self, number: _Number) -> set[str]:
        """The units within four tokens after `number` in this chunk, and a currency before it."""
        near = _unit_tokens(self.folded, number.number_end, 4)
        units = {u for u in (_as_unit(token, attached) for token, attached, _ in near) if u}
        return units | {number.unit} if number.unit else units

    @classmethod
    def of(cls, hit: Hit) -> "_Chunk":
        pages = set(range(hit.page, (hit.page_end or hit.page) + 1)) if hit.page is not None else set()
        return cls(hit.chunk_id, hit.text, pages, setting=f"{hit.heading}\n{hit.source}")  # ids are ours, not text

    def supports(self, claim: Claim, data: object) -> bool:
        if claim.kind in ("quote", "name"):
            words: list[str] = data  # type: ignore[assignment]
            return f" {' '.join(words)} " in self.joined or (
                claim.kind == "name" and all(w in self.word_set for w in words if len(w) > 1))
        if claim.kind in ("identifier", "version"):
            return self._has_token(str(data))
        if claim.kind == "page":
            return data in self.pages
        if claim.kind == "date":
            return any(self._has_date(reading) for reading in data)  # type: ignore[union-attr]
        return self._has_number(data)  # type: ignore[arg-type]

    def _has_token(self, token: str) -> bool:
        body = token.lstrip("v") if _VERSION.match(token) else token
        parts = [re.escape(p) for p in re.split(r"[-_\s]+", body) if p]
        if not parts:
            return False
        prefix = r"(?:v|version\s*)?" if _VERSION.match(token) else ""
        pattern = rf"(?<![\w.]){prefix}{'[-_ ]?'.join(parts)}(?![\w]|\.\w)"
        return re.search(pattern, self.folded) is not None

    def _has_date(self, claim: _Date) -> bool:
        for date in self.dates:
            if date.month != claim.month or (claim.day is not None and date.day != claim.day):
                continue
            if claim.year is None or date.year == claim.year or (date.year is None and claim.year in self.years):
                return True
        return False

    def _has_number(self, claim: _Number) -> bool:
        wanted = _COMPATIBLE.get(claim.unit or "", {claim.unit}) if claim.unit else None
        quantum = Decimal(1).scaleb(claim.base.as_tuple().exponent) * claim.multiplier  # type: ignore[arg-type]
        for value, base, units in self.numbers:
            if claim.approximate:
                same = abs(value - claim.value) <= quantum / 2
            else:
                same = value == claim.value or (claim.value >= 0 and -value == claim.value) or (
                    claim.multiplier == 1 and base == claim.value)
            if same and (wanted is None or wanted & units):
                return True
        return False


# ------------------------------------------------------------------------------------ does it answer the question?
# A claim can be in the retrieved text and still not answer the question. The rules, each one line to the user: a
# value of what is asked at all (0), the quantity asked against the quantities given (1), the question's codes in
# the passage that holds the value (2), our own chunk ids given as a value (3), the question's anchors in none of
# the retrieved text (4), the question's year or place against the one the sentences holding the value are about
# (5), a year or name asked found only in passages about other things (6), and a count of other things (7).

_DIMENSION_OF = {canon: dimension for dimension, canons in {
    "pressure": "bar psi pa kpa mpa", "duration": "hour minute second ms day week month year",
    "temperature": "celsius fahrenheit kelvin degree", "share": "percent",
    "amount of money": "usd eur gbp nok sek dkk chf jpy", "length": "mm cm m km in ft", "mass": "kg g mg t lb",
    "volume": "l ml m3 gal", "power": "w kw mw", "voltage": "v", "current": "a", "frequency": "hz khz rpm",
    "data size": "b kb mb gb tb kib mib gib tib", "flow rate": "m3/h l/min", "sound level": "db",
}.items() for canon in canons.split()}
_ASKED_BY_WORD = {word: dimension for dimension, words in {
    "mass": "weigh weighs weight weights mass", "pressure": "pressure pressures",
    "amount of money": "price prices priced cost costs revenue revenues budget turnover profit fee fees salary",
    "power": "power wattage", "temperature": "temperature temperatures", "voltage": "voltage",
    "frequency": "frequency", "length": "length width height diameter depth distance",
    "duration": "duration interval intervals lifetime life period often", "share": "percentage percentages",
}.items() for word in words.split()}
_ASKED_PHRASES = {"how long": {"duration", "length"}, "flow rate": {"flow rate"}, "cubic": {"volume"},
                  "revolutions per minute": {"frequency"}, "rotational speed": {"frequency"}}
# unit words that are also ordinary words or letters in a question ("the second pump", "foot valve", "a")
_NOT_ASKED_UNITS = {"second", "foot", "in", "min", "ms"}
_ANY_QUANTITY = {"share"}  # a percentage can answer any quantity question ("up 7.2 percent")
_ID_WORDS = {"chunk_id", "chunk_ids", "chunk-id", "chunk-ids", "chunkid"}  # our vocabulary, never a claim
_ID_LABEL = re.compile(r"(?:\bchunks?(?:[\s_-]*ids?)?|\bids?|\bsources?|\bcitations?|\bcited|\bcites?|\bsee|"
                       r"\brefs?)(?:\s+(?:is|was|are|were))?\s*[:=#]?\s*$|[(\[]\s*$", re.IGNORECASE)  # "the chunk id is"
_ID_LISTED = re.compile(r"([\w-]+)\s*(?:,|;|/|&|\band|\bor)\s*$", re.IGNORECASE)  # an earlier id of a list
_CHUNK_ID_SHAPE = re.compile(r"^(?:[0-9a-f]{12,}|chunk[\w-]*)$")


def asked_dimensions(question: str) -> set[str]:
    """The kinds of quantity the question asks for (`mass` for "how much does it weigh in kilograms"), if any.

    A unit the question gives with a number ("at 80 °C") is a condition, not what is asked. A question that asks
    for more than one thing ("the pressure and the seal interval") may ask for kinds not told apart here: none.
    """
    folded = _fold(question)
    if re.search(r"\b(?:and|or|as well as)\b|[,;&]", folded):
        return set()
    asked = {dim for phrase, dims in _ASKED_PHRASES.items() if re.search(rf"\b{phrase}\b", folded) for dim in dims}
    words = re.findall(r"[$€£¥%]|[^\W_]+", folded)
    for index, word in enumerate(words):
        if word in _ASKED_BY_WORD:
            asked.add(_ASKED_BY_WORD[word])
        canon = _UNITS.get(word)
        after_number = index > 0 and (words[index - 1][0].isdigit() or words[index - 1] == "per")  # or a rate's
        if canon and not after_number and word not in _NOT_ASKED_UNITS and (len(word) > 2 or word in _CURRENCY_SYMBOLS
                                                                            or word in ("kg", "km", "mm", "cm", "kw")):
            dimension = _DIMENSION_OF.get(canon)
            per = words[index + 1:index + 3]
            if per[:1] == ["per"] and dimension:
                dimension = "flow rate" if dimension == "volume" else None  # "cubic metres per hour"
            if dimension:
                asked.add(dimension)
    return {"share"} if "share" in asked else asked  # "by what percentage did revenue grow": a share, not money


def _quantity_mismatches(found: Sequence[tuple[Claim, object]], asked: set[str], chunks: Sequence["_Chunk"],
                         folded: str) -> list[tuple[Claim, str]]:
    """Rule 1: when the question asks for a kind of quantity and every number of the answer is of another kind.

    A bare number ("30") is of the kinds the retrieved passages give it with ("30 days": a duration); it may be the
    answer when one of them is the kind asked, or when a passage gives it with no unit. A number followed by a word
    that is neither a unit nor a common word ("50 Nm") is not judged: that word may be a unit we do not know.
    """
    numbers = [(claim, data) for claim, data in found if claim.kind == "number"]
    if not asked or not numbers:
        return []
    given = []
    for claim, number in numbers:
        dimension = _DIMENSION_OF.get(number.unit or "")  # type: ignore[attr-defined]
        if dimension is None:
            if _is_year(number):  # type: ignore[arg-type]
                continue  # a year beside the quantity ("in 2029") is no candidate
            bare = _bare(folded, number.end)  # type: ignore[attr-defined]
            kinds = _kinds_given(number.value, chunks) if bare else {None}  # type: ignore[attr-defined]
            if not kinds or None in kinds or kinds & (asked | _ANY_QUANTITY):
                return []  # it may be the quantity asked: nothing to tell
            only = " or ".join(_a(kind) for kind in sorted(kinds))  # type: ignore[arg-type]
            given.append((claim, only, "in the retrieved text only as "))
            continue
        if dimension in asked or dimension in _ANY_QUANTITY:
            return []
        given.append((claim, _a(dimension), ""))
    wanted = " or ".join(_a(d) for d in sorted(asked))
    return [(claim, f'"{claim.text}" is {only}{kind}, but the question asks for {wanted}')
            for claim, kind, only in given]


_ASKS_DATE = re.compile(r"\b(?:(?:what|which) (?:date|day)|on what)\b")
_ASKS_COUNT = re.compile(r"\bhow (?:many|much)\b|\b(?:what|which) (?:percentage|number of)\b|\bby what\b")
_ASKS_CODE = re.compile(r"\b(?:what|which)(?:'s|\s+(?:is|was|are|were))\s+(?:the\s+|its\s+|their\s+)?"
                        r"(?:[\w-]+\s+){0,3}?(?:number|version|code|id|identifier)\b")  # "what is the document number"
# Nouns whose instances are proper names: "in which German city", "which stock exchange", "what is the name of".
_NAME_NOUNS = ("name", "city", "town", "village", "country", "region", "county", "province", "municipality",
               "company", "firm", "bank", "exchange", "university")
_ASKS_NAME = re.compile(r"^\W*(?:(?:to|by|from|with|for)\s+)?who(?:m|se)?\b|\b(?:what|which)(?:'s|\s+(?:is|was|are|"
                        rf"were))?\s+(?:the\s+|its\s+|their\s+)?(?:[\w-]+\s+)?(?:{'|'.join(_NAME_NOUNS)})s?\b")
_ASKS_YEAR = re.compile(r"\b(?:what|which) year\b|^\W*when\b")
_ANY_VALUE = ("number", "date", "identifier", "version")
_VALUE_KINDS = {"number or code": _ANY_VALUE, "date": _ANY_VALUE, "year": ("number", "date"), "number": ("number",),
                "name": ("name", "quote", "identifier")}  # the claims that can give what is asked


def _wanted(asked: "_Chunk", dimensions: set[str]) -> str | None:
    """What the question asks for, when it is a value: a number or code, a date, a year, a number, a name."""
    if _ASKS_CODE.search(asked.folded):
        return "number or code"
    if _ASKS_DATE.search(asked.folded):
        return "date"
    if _ASKS_YEAR.search(asked.folded):
        return "year"  # "in which year": a year, not a duration
    if _ASKS_COUNT.search(asked.folded) or dimensions:
        return "number"
    return "name" if _ASKS_NAME.search(asked.folded) else None


def _no_value(given: Sequence[tuple[Claim, object]], asked: "_Chunk", wanted: str | None,
              folded: str) -> list[tuple[Claim, str]]:
    """Rule 0: the question asks for a number (how many, how much, a kind of quantity), a code ("what is the
    document number"), a date or a name (who, "in which city", "which stock exchange"), and the answer gives none
    of its own: prose, a pointer ("on page 3"), our chunk id as a citation, the question's own values, or, for a
    number, only years (held-out h47 and h48, session 16: "the document number ... is chunk_id: 523d...", "there
    are no new field engineers who completed Pump School in 2029"; h49 and h53: "listed on another exchange",
    "managed by the maintenance team"; h51: a percentage answered with "the outlook for 2030")."""
    if wanted is None or any(claim.kind in _VALUE_KINDS[wanted] and not asked.supports(claim, data) and not (
            wanted == "number" and claim.kind == "number" and _is_year(data)  # type: ignore[arg-type]
            and _counted_noun(folded, data) is None) for claim, data in given):  # type: ignore[arg-type]
        return []
    return [(Claim(f"no {wanted}", "answer"), f"the question asks for a {wanted}, and the answer gives none")]


_MONTH_NAMES = "January February March April May June July August September October November December".split()


def _date_mismatches(found: Sequence[tuple[Claim, object]], folded_question: str) -> list[tuple[Claim, str]]:
    """Rule 1 for dates: the question asks on what date, and the answer gives a bare year and no date (the demo's
    q09, session 14: "approved ... on 2030", the year a budget sentence gave for the work's end), or only dates
    outside the month the question names ("on what date in June 2029": "March 12, 2029", held-out h42, session
    16)."""
    if not _ASKS_DATE.search(folded_question):
        return []
    dates = [(claim, data) for claim, data in found if claim.kind == "date"]
    if dates:
        months = {reading.month for _, _, readings in _dates(folded_question) for reading in readings}
        if not months or any(reading.month in months for _, data in dates for reading in data):  # type: ignore
            return []
        named = " or ".join(_MONTH_NAMES[m - 1] for m in sorted(months))
        return [(claim, f'"{claim.text}" is not in {named}, the month the question asks about') for claim, _ in dates]
    return [(claim, f'"{claim.text}" is a year, but the question asks for a date') for claim, data in found
            if claim.kind == "number" and _is_year(data)]  # type: ignore[arg-type]


_NEXT_WORD = re.compile(r"[ \t]*([^\W\d_]+)")
_REFERENCE_BEFORE = re.compile(r"\b(?:pages?|pp?|chapter|section|figure|fig|table|step|item|no|rev|revision)\.?\s*$")


def _bare(folded: str, end: int) -> bool:
    """The number ending at `end` stands alone: what follows is punctuation, the end, or a common word."""
    following = _NEXT_WORD.match(folded, end)
    return following is None or following.group(1) in _COMMON


def _kinds_given(value: Decimal, chunks: Sequence["_Chunk"]) -> set[str | None]:
    """The kinds of quantity the passages give `value` with (None: with no unit); page and section numbers aside."""
    return {kind for chunk in chunks for kind in chunk.kinds.get(value, ())}


def _anchor_mismatches(chunks: Sequence["_Chunk"], question: str, asked: "_Chunk") -> list[tuple[Claim, str]]:
    """Rule 4: a code or year the question asks about (`E-309`, `2026`) is absent from the retrieved text while others
    of its kind are there (`E-117`; 2028 and 2029): the passages speak of other things and do not answer it.

    Retrieved text naming no code of the family (no year at all) is no evidence either way: a manual's pages seldom
    repeat the model's name. A code the question names as what it asks about ("error code E-309", "option
    `work_mem`") or a code of no family (`max_wal_size`) is anchored only when some passage holds it. Names are no
    anchors: the pages of a company's report seldom repeat the company's name.
    """
    mismatched = []
    for start, claim, data in asked.claims:
        if claim.kind == "number" and _is_year(data):  # type: ignore[arg-type]
            named = sorted({y for c in chunks for y in c.years if y in _YEARS})
            others = [] if int(data.value) in named else [str(y) for y in named]  # type: ignore[attr-defined]
        elif claim.kind == "identifier" and not any(c.supports(claim, data) for c in chunks):
            code = _FAMILY.match(_fold(claim.text))
            members = {m for c in chunks for m in _members(c, code.group(1))} if code else set()
            others = _written_as(claim.text, code, members) if code else []
            if not others and (code is None or _NAMED_AS_OBJECT.search(_fold(question)[:start])):
                mismatched.append((claim, f'"{claim.text}", which the question asks about, is in none of the '
                                          "retrieved passages"))
        else:
            continue
        if others:
            mismatched.append((claim, f'"{claim.text}", which the question asks about, is in none of the retrieved '
                                      f"passages (they name {', '.join(others[:4])})"))
    return mismatched


_NAMED_AS_OBJECT = re.compile(r"\b(?:code|error|option|parameter|setting|flag|message|variable|command|function|"
                              r"field|key|status|alarm|fault|warning|register|part number)\s*[`'\"]?$")


_YEARS = range(1900, 2101)  # the years a question or an answer names beside a quantity


def _is_year(number: _Number) -> bool:
    return number.unit is None and number.value == number.value.to_integral_value() and int(number.value) in _YEARS


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


_FAMILY = re.compile(r"^([a-z]+)([-_ ]?)([0-9a-z]*\d[0-9a-z]*)$")  # Hydra-5: family "hydra", member "5"


def _members(chunk: "_Chunk", family: str) -> set[str]:
    """The members of a code family a chunk names (`{"7"}` for a passage about the Hydra-7)."""
    return set(re.findall(rf"(?<![0-9a-z]){re.escape(family)}[-_ ]?([0-9a-z]*\d[0-9a-z]*)(?![0-9a-z])", chunk.folded))


def _subject_mismatches(found: Sequence[tuple[Claim, object]], chunks: Sequence["_Chunk"], question: str,
                        asked: "_Chunk", wanted: str | None) -> list[tuple[Claim, str]]:
    """Rule 2: the question names a code of a family (`Hydra-5`), and every passage holding the answer's values
    names another member (`Hydra-7`) and not it. The answer's values are its claims the question does not hold,
    other members of the family aside (an answer that also names the Hydra-7 gives no value by it); a passage
    naming no member of the family (a manual page that never repeats the model) is no evidence either way, unless
    the question asks for a value (rule 0) of a code it names as what it asks about ("the threshold that triggers
    error code E-117") and a retrieved passage holds the code: then a number, date or code of the answer is in a
    passage naming it (held-out h41, session 16: the Hydra-7's 42 bar as E-117's threshold).
    """
    values = [(claim, data) for claim, data in found if not asked.supports(claim, data)]
    for start, subject, data in asked.claims:
        code = _FAMILY.match(_fold(subject.text)) if subject.kind == "identifier" else None
        if code is None:
            continue
        own = [(claim, data) for claim, data in values if not _of_family(claim, code.group(1))]  # not "the Hydra-7"
        others = _other_members(own, chunks, code.group(1), code.group(3)) if own else set()
        if others:
            about = " or ".join(_written_as(subject.text, code, others))
            return [(claim, f'"{claim.text}" is only in passages about {about}, not {subject.text}')
                    for claim, _ in own]
        holding = [c for c in chunks if c.supports(subject, data)]
        given = [(claim, value) for claim, value in own if claim.kind in _ANY_VALUE]  # a name may be an aside
        if wanted and given and holding and _NAMED_AS_OBJECT.search(asked.folded[:start]) and not any(
                c.supports(claim, value) for claim, value in given for c in holding):
            return [(claim, f'"{claim.text}" is in none of the retrieved passages about {subject.text}')
                    for claim, _ in given]
    return []


def _of_family(claim: Claim, family: str) -> bool:
    """`claim` is a member of the code family `family` itself (`Hydra-7` of "hydra"): a subject, not a value."""
    member = _FAMILY.match(_fold(claim.text)) if claim.kind == "identifier" else None
    return member is not None and member.group(1) == family


def _parts_holding(chunk: "_Chunk", claim: Claim, data: object, ends: re.Pattern) -> list["_Chunk"]:
    """The parts of `chunk`'s own text, split at `ends` (sentences, clauses), that hold `claim`."""
    parts = (_Chunk(chunk.chunk_id, part, chunk.pages) for part in ends.split(chunk.body))
    return [part for part in parts if part.supports(claim, data)]


def _written_as(code_text: str, code: re.Match, members: set[str]) -> list[str]:
    """Other `members` of a code's family spelled as the code is (`Hydra-5` and {"7"}: ["Hydra-7"]), sorted."""
    written = code_text[:len(code.group(1))] + (code.group(2) or "-")
    return [f"{written}{member.upper()}" for member in sorted(members)]


def _other_members(values: Sequence[tuple[Claim, object]], chunks: Sequence["_Chunk"], family: str,
                   member: str) -> set[str]:
    """The other members of `family` named where one of the values is given, in every passage holding one; empty
    when one of those names `member` or no member at all.

    Where a value is given is its clauses (split at sentence ends and semicolons) when they name a member, else
    its passage: "the Hydra-7 is rated for ... 80 degrees Celsius; its predecessor, the Hydra-5, was limited to
    35 bar" gives 80 °C for the Hydra-7 alone (held-out h34, session 15).
    """
    others: set[str] = set()
    for claim, data in values:
        for chunk in (c for c in chunks if c.supports(claim, data)):
            clauses = _parts_holding(chunk, claim, data, _CLAUSE_END)
            members = set().union(*(_members(clause, family) for clause in clauses)) or _members(chunk, family)
            if member in members or not members:
                return set()
            others |= members
    return others


# Nouns that, after a proper name or before one, make it a place of the company's: "the Stavanger plant",
# "the service centre in Bergen".
_PLACE_NOUNS = ("plant", "site", "factory", "works", "mill", "centre", "center", "office", "branch", "facility",
                "station", "depot", "warehouse", "terminal", "yard", "campus", "subsidiary", "division")
_PLACE_NAME = r"[A-Z][^\W\d_]+"
_NAME_NOUN = re.compile(rf"\b({_PLACE_NAME})((?:\s+[a-z][a-z-]*){{0,2}}?)\s+({'|'.join(_PLACE_NOUNS)})s?\b")
_NOUN_NAME = re.compile(rf"\b({'|'.join(_PLACE_NOUNS)})s?\s+(?:(?:in|at)\s+)?({_PLACE_NAME})\b")
# A line break ends a sentence after a full stop, before a blank line or a list item: a PDF wraps its sentences.
_LINE_END = r"\n\s*\n\s*|\n(?=\s*(?:[-*•]|\d+[.)])\s)"
_SENTENCE_END = re.compile(rf"(?<=[.!?;])\s+(?=[\"'(]?[A-Z0-9])|{_LINE_END}")
_CLAUSE_END = re.compile(rf"(?<=[.!?;])\s+|{_LINE_END}")  # clauses: at semicolons too
_YEAR_IN_NAME = re.compile(r"(?<!\d)(?:19|20)\d\d(?!\d)")  # in a file name: report_2029.pdf, minutes_2029-03


def _places(text: str) -> set[tuple[str, str]]:
    """The (name, place noun) pairs normalized `text` names: {("Stavanger", "plant")} for "the Stavanger plant"."""
    found = set()
    for match in _NAME_NOUN.finditer(text):
        if match.group(1).lower() not in _COMMON and not set(match.group(2).split()) & _COMMON:
            found.add((match.group(1), match.group(3)))
    found |= {(name, noun) for noun, name in _NOUN_NAME.findall(text) if name.lower() not in _COMMON}
    return found


def _years_in(text: str) -> set[int]:
    """The years `text` names as bare numbers (not "1,000-hour", not a quantity)."""
    return {int(n.value) for n in _digit_numbers(_fold(text)) if _is_year(n)}


def _setting_mismatches(found: Sequence[tuple[Claim, object]], chunks: Sequence["_Chunk"], question: str,
                        asked: "_Chunk", folded_answer: str) -> list[tuple[Claim, str]]:
    """Rule 5: the question names a year (`2028`) or a place (`the Stavanger plant`), and every sentence holding
    one of the answer's values is about another (2029; `the Tromso plant`) and not it.

    A sentence naming no year (no such place) is about those its passage's heading and file name name
    (`norrvik_annual_report_2029.pdf`: 2029); where they name none either, it is no evidence either way. The
    answer's values are its numbers and dates the question does not hold, years aside. A number the answer gives
    as a count ("two units") is held by the sentences that count the same thing with it ("firmware updated on two
    units", not "ran two shifts"), where any do (held-out h38 and h40, session 15). A comparison's base ("up 7.2
    percent from 172.2 million euros in 2028") is of its own year, and the rest of its sentence of the others, in
    the passages and in the answer (whose base gives no value: h39 re-run, session 16, 2029's growth for 2028).
    """
    text = normalize(question)
    years = {int(d.value) for _, c, d in asked.claims if c.kind == "number" and _is_year(d)}  # type: ignore
    places = _places(text)
    if not years and not places:
        return []
    bases = _bases(folded_answer)
    values = [(claim, data) for claim, data in found if claim.kind in ("number", "date")
              and not asked.supports(claim, data) and not (claim.kind == "number" and _is_year(data))  # type: ignore
              and not any(base.supports(claim, data) for base in bases)]
    mismatched = []
    for claim, data in values:
        sentences = [(chunk, s.body) for chunk in chunks if chunk.supports(claim, data)
                     for s in _parts_holding(chunk, claim, data, _SENTENCE_END)]
        if claim.kind == "number" and (noun := _counted_noun(folded_answer, data)):  # type: ignore[arg-type]
            sentences = [(c, s) for c, s in sentences if _counts(s, data, noun)] or sentences  # type: ignore[arg-type]
        if not sentences:
            continue
        reason = _other_years(sentences, years, claim, data) or _other_places(sentences, places, text, claim)
        if reason:
            mismatched.append((claim, reason))
    return mismatched


_COUNTED = re.compile(r"[^\W\d_]+")


def _counted_noun(folded_answer: str, number: "_Number") -> str | None:
    """What a bare number of the (casefolded) answer counts: the word after it ("two units": "unit"), if any."""
    following = _NEXT_WORD.match(folded_answer, number.number_end)
    if number.unit or following is None or following.group(1) in _COMMON:
        return None
    return stem(following.group(1))


def _words_after(sentence: str, number: "_Number") -> list[list[str]]:
    """The three words after each place `sentence` gives `number`'s value ("on two pump units": [["pump", "units"]])."""
    folded = _fold(sentence)
    return [_COUNTED.findall(folded[given.number_end:])[:3]
            for given in [*_digit_numbers(folded), *_word_numbers(folded, with_one=True)] if given.value == number.value]


def _counts(sentence: str, number: "_Number", noun: str) -> bool:
    """`sentence` gives `number` with `noun` among the three words after it ("updated on two pump units")."""
    return any(noun in map(stem, words) for words in _words_after(sentence, number))


_BASE = re.compile(r"\b(?:from|than|compared (?:with|to)|against)\s(?:[^.;]|\.(?=\d))*?\bin\s+(?:19|20)\d\d\b",
                   re.IGNORECASE)  # "from 172.2 million euros in 2028"


def _years_for(sentence: str, claim: Claim, data: object) -> set[int]:
    """The years `sentence` gives `claim` for: those of the comparison's base holding it ("from 172.2 million euros
    in 2028"), else those of the rest of the sentence, else all it names."""
    held = [base.text for base in _bases(sentence) if base.supports(claim, data)]
    return set().union(*map(_years_in, held)) if held else _years_in(_BASE.sub(" ", sentence)) or _years_in(sentence)


@lru_cache(maxsize=256)
def _bases(text: str) -> tuple["_Chunk", ...]:
    """The comparison bases `text` holds ("from 172.2 million euros in 2028"), each as a passage of its own (asked
    once per sentence for each of an answer's values)."""
    return tuple(_Chunk("(base)", base, set()) for base in _BASE.findall(text))


def _other_years(sentences: Sequence[tuple["_Chunk", str]], years: set[int], claim: Claim,
                 data: object) -> str | None:
    """Why `claim` is about other years than the question's `years`, when every sentence holding it is."""
    others: set[int] = set()
    for chunk, sentence in sentences:
        named = _years_for(sentence, claim, data) or {int(y) for y in _YEAR_IN_NAME.findall(chunk.setting)}
        if not years or not named or named & years:
            return None
        others |= named
    return (f'"{claim.text}" is given for {", ".join(map(str, sorted(others)))} in the retrieved passages, not '
            f'for {", ".join(map(str, sorted(years)))}')


def _other_places(sentences: Sequence[tuple["_Chunk", str]], places: set[tuple[str, str]], question: str,
                  claim: Claim) -> str | None:
    """Why `claim` is about another place than the (normalized) `question`'s, when every sentence holding it is."""
    for name, noun in sorted(places):
        others: set[str] = set()
        for chunk, sentence in sentences:
            named = {n for n, kind in _places(sentence) if kind == noun} or \
                {n for n, kind in _places(chunk.setting) if kind == noun}
            named = {n for n in named if n not in question}
            if not named or name in sentence:
                others = set()
                break
            others |= named
        if others:
            return (f'"{claim.text}" is given for the {" or ".join(sorted(others))} {noun} in the retrieved passages, '
                    f"not the {name} {noun}")
    return None


_COUNT_WORD = re.compile(r"[ \t]*[a-z]{3,}\b")  # a word in lower case: "lines", not "Nm" (a unit we do not know)


def _count_mismatches(found: Sequence[tuple[Claim, object]], chunks: Sequence["_Chunk"], asked: "_Chunk",
                      text: str) -> list[tuple[Claim, str]]:
    """Rule 7: a number the (normalized) answer gives as a count ("two assembly lines") that no retrieved sentence
    holding it counts the same thing with, while each gives it to another word ("ran two shifts", "every two years",
    "employed 412 people"): it counts those. A sentence where a common word follows it ("three of the pumps") is no
    evidence either way; years aside, and a word not in lower case ("30 Nm": a unit we may not know). Held-out h57,
    session 16; h28, session 14: 412 employees as Bergen's field engineers.
    """
    mismatched = []
    for claim, data in found:
        if claim.kind != "number" or asked.supports(claim, data) or _is_year(data):  # type: ignore[arg-type]
            continue
        noun = _counted_noun(text.casefold(), data)  # type: ignore[arg-type]
        if noun is None or not _COUNT_WORD.match(text, data.number_end):  # type: ignore[attr-defined]
            continue
        sentences = [s.body for c in chunks if c.supports(claim, data)
                     for s in _parts_holding(c, claim, data, _SENTENCE_END)]
        after = [words for s in sentences for words in _words_after(s, data)]  # type: ignore[arg-type]
        if not after or any(not words or words[0] in _COMMON or noun in map(stem, words) for words in after):
            continue
        others = " or ".join(sorted({words[0] for words in after}))
        mismatched.append((claim, f'"{claim.text}" counts {others} in the retrieved passages, not what the answer '
                                  "counts"))
    return mismatched


_ASKED_NOUNS = {*_NAME_NOUNS, "year", "date", "day", "place"}  # what a question asks for, not what it is about


def _topic_mismatches(found: Sequence[tuple[Claim, object]], chunks: Sequence["_Chunk"], question: str,
                      asked: "_Chunk", wanted: str | None) -> list[tuple[Claim, str]]:
    """Rule 6: the question asks for a year or a name (rule 0), and none of the answer's years (names) that the
    question does not hold is in a retrieved passage about what it asks: one holding a word of the question other
    than its claims, common words and what it asks for ("founded" in "in which year was Norrvik Hydraulics
    founded?"), and each name of the question that some but at most half of the retrieved passages hold ("Pump
    School"; not the company's name, on every page). Held-out h43, h46, h59, h60 (session 16): years and places
    the documents give for other things ("founded in 2029", Stavanger as a German city and as Pump School's town).
    """
    if wanted not in ("year", "name"):
        return []
    values = [(claim, data) for claim, data in found if not asked.supports(claim, data) and (
        claim.kind == "name" if wanted == "name"
        else claim.kind == "date" or (claim.kind == "number" and _is_year(data)))]  # type: ignore[arg-type]
    claims = [(claim, data) for _, claim, data in asked.claims]
    held = {word for claim, _ in claims for word in _words(_fold(claim.text))}
    terms = {stem(w): w for w in asked.words if len(w) > 2 and w not in _COMMON | _ASKED_NOUNS | held}
    names = [(claim, data) for claim, data in claims if claim.kind == "name"
             and 0 < sum(c.supports(claim, data) for c in chunks) <= len(chunks) / 2]

    def about(chunk: "_Chunk") -> bool:
        return (not terms or bool(chunk.stems & terms.keys())) and all(chunk.supports(c, d) for c, d in names)

    if not values or any(about(c) for claim, data in values for c in chunks if c.supports(claim, data)):
        return []
    what = ", ".join([*(f'"{claim.text}"' for claim, _ in names), *(f'"{w}"' for w in terms.values())])
    return [(claim, f'"{claim.text}" is in none of the retrieved passages about what the question asks ({what})')
            for claim, _ in values]


def _cites(text: str, start: int) -> bool:
    """The token at `start` stands where a citation does: after a label (`chunk ids`, `source:`) or a bracket,
    possibly after other ids of the same list."""
    before = text[max(0, start - 200):start]
    while (listed := _ID_LISTED.search(before)) and any(ch.isdigit() for ch in listed.group(1)):
        before = before[:listed.start()]
    return bool(_ID_LABEL.search(before))


# ------------------------------------------------------------------------------------ the check


@dataclass(frozen=True)
class Grounding:
    """The verdict on one answer: each checked claim with the chunk that supports it (None: unsupported), and
    the claims found but not answering the question, each with why (`mismatched`)."""

    checked: tuple[tuple[Claim, str | None], ...]
    exempt: tuple[Claim, ...] = ()  # claims an abstention only repeats from the question
    mismatched: tuple[tuple[Claim, str], ...] = ()

    @property
    def grounded(self) -> bool:
        return all(chunk is not None for _, chunk in self.checked) and not self.mismatched

    @property
    def missing(self) -> list[str]:
        """The claims found in no retrieved chunk."""
        return [claim.text for claim, chunk in self.checked if chunk is None]

    @property
    def unsupported(self) -> list[str]:
        """Every claim not verified: found nowhere, or found but not answering the question."""
        return list(dict.fromkeys([*self.missing, *(claim.text for claim, _ in self.mismatched)]))

    @property
    def reasons(self) -> dict[str, str]:
        """Why each found claim does not answer the question, one line each."""
        return {claim.text: reason for claim, reason in self.mismatched}

    @property
    def supporting(self) -> list[str]:
        """Chunk ids that support a claim, in the order of the claims (each once)."""
        return list(dict.fromkeys(chunk for _, chunk in self.checked if chunk is not None))


def check(answer: str, evidence: Sequence[Hit], *, question: str = "", cited: Sequence[str] = ()) -> Grounding:
    """Check every claim of `answer` against the `evidence` chunks, those whose ids are `cited` first, then that
    an answer (not a decline) answers the question: the quantity asked, the question's codes, no chunk id as a value,
    the question's anchors retrieved.

    The question's text never supports a claim; when the answer declines, claims that only repeat the
    question are exempt from the check (they are not asserted). Chunk ids are not text of the documents: one given
    as a citation is no claim, one given as a value is mismatched.
    """
    order = {cid: i for i, cid in enumerate(cited)}
    chunks = [_Chunk.of(hit) for hit in sorted(evidence, key=lambda h: order.get(h.chunk_id, len(order)))]
    ids = {hit.chunk_id.casefold() for hit in evidence}
    declines = is_abstention(answer)
    asked = _Chunk("(question)", question, set())
    text = normalize(answer)
    checked: list[tuple[Claim, str | None]] = []
    exempt: list[Claim] = []
    mismatched: list[tuple[Claim, str]] = []
    found: list[tuple[Claim, object]] = []
    given: list[tuple[Claim, object]] = []  # every claim of the answer (found or not), citations aside
    for start, claim, data in _extract(text):
        if claim.kind == "identifier" and (data in _ID_WORDS or (
                (data in ids or _CHUNK_ID_SHAPE.match(str(data))) and _cites(text, start))):
            continue  # a citation (the citation check judges it), not a claim
        given.append((claim, data))
        if claim.kind == "identifier" and data in ids:  # a value, but not one of the documents' (rule 3)
            if not declines:
                mismatched.append((claim, f'"{claim.text}" is one of our chunk ids, not a value from the documents'))
            continue
        chunk = next((c.chunk_id for c in chunks if c.supports(claim, data)), None)
        if chunk is None and question and declines and asked.supports(claim, data):
            exempt.append(claim)
            continue
        checked.append((claim, chunk))
        if chunk is not None:
            found.append((claim, data))
    if question and not declines:
        dimensions, folded = asked_dimensions(question), text.casefold()
        wanted = _wanted(asked, dimensions)
        mismatched += _no_value(given, asked, wanted, folded) or \
            _quantity_mismatches(found, dimensions, chunks, folded) or _date_mismatches(found, asked.folded) or \
            _subject_mismatches(found, chunks, question, asked, wanted) or \
            _anchor_mismatches(chunks, question, asked) or \
            _setting_mismatches(found, chunks, question, asked, folded) or \
            _topic_mismatches(found, chunks, question, asked, wanted) or _count_mismatches(found, chunks, asked, text)
    return Grounding(tuple(checked), tuple(exempt), tuple(mismatched))


def _listing(claims: Sequence[str]) -> str:
    """`"a"`, `"a" and "b"`, `"a", "b" and "c"`; past SHOWN_CLAIMS, `... and N more`."""
    shown = [f'"{c}"' for c in claims[:SHOWN_CLAIMS]] or ["the answer's claims"]
    if len(claims) > SHOWN_CLAIMS:
        return ", ".join(shown) + f" and {len(claims) - SHOWN_CLAIMS} more"
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _why(unsupported: Sequence[str], reasons: Mapping[str, str]) -> tuple[list[str], str]:
    """(claims found nowhere, the reasons of the others joined in one clause)."""
    missing = [claim for claim in unsupported if claim not in reasons]
    return missing, "; ".join(list(reasons.values())[:SHOWN_CLAIMS])


def explain(unsupported: Sequence[str], reasons: Mapping[str, str] | None = None) -> str:
    """One line for a warning or a log: the claims found nowhere, then why each found one does not answer."""
    missing, why = _why(unsupported, reasons or {})
    found_nowhere = f"not found in any retrieved chunk: {'; '.join(missing)}" if missing else ""
    return "; ".join(part for part in (found_nowhere, why) if part)


def look_again_note(unsupported: Sequence[str], reasons: Mapping[str, str] | None = None) -> str:
    """The system note for one more look: it names the claims found in no retrieved chunk, says why each found
    claim does not answer the question, and offers DECLINE to send as it is."""
    missing, why = _why(unsupported, reasons or {})
    parts = []
    if missing:
        verb = "appears" if len(missing) == 1 else "appear"
        parts.append(f"{_listing(missing)} {verb} in none of the chunks you retrieved")
    if why:
        parts.append(why)
    return (f"[system] Your answer was not delivered. {'; '.join(parts) or _listing([])}: search for what the "
            "question asks and correct the answer, citing the chunk ids that hold each value; or, if no chunk "
            f'gives it, say that the documents do not answer the question: send_message "{DECLINE}"')


def strict_abstention(unsupported: Sequence[str], reasons: Mapping[str, str] | None = None) -> str:
    """The answer given instead of an ungrounded one under --strict: it says what could not be verified, and why."""
    missing, why = _why(unsupported, reasons or {})
    parts = [f"I could not find {_listing(missing)} in any of them"] if missing or not why else []
    if why:
        parts.append(why)
    return f"The documents I retrieved do not answer this reliably: {'; '.join(parts)}, so I give no answer."
