"""Text rules shared by the Low tiers: content words, capitalised entities, dates and
relative time expressions. Pure functions, no models."""

from __future__ import annotations

import re
from datetime import date, timedelta

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its
itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
did does likely might may also get got go went like really yeah oh hey hi thanks thank lot
much many one ever kind sure much would could something anything thing things think know
made make want
""".split())  # noqa: SIM905 - a word list reads better as text

MONTHS = {m: i + 1 for i, m in enumerate((
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december"))}
_MONTH_RE = "|".join(list(MONTHS) + [m[:3] for m in MONTHS])
DATE_RE = re.compile(
    rf"\b(\d{{1,2}}\s+(?:{_MONTH_RE})\w*,?\s+\d{{4}}|(?:{_MONTH_RE})\w*\s+\d{{1,2}},?\s+\d{{4}}"
    rf"|(?:{_MONTH_RE})\w*\s+\d{{4}}|(?:19|20)\d{{2}})\b", re.IGNORECASE)
RELATIVE_RE = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|last (?:week|weekend|month|year|night|"
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday)|next (?:week|month|year)|"
    r"this (?:week|weekend|month|year)|(?:a|one|two|three|few) (?:days|weeks|months|years) ago|"
    r"recently|ago)\b", re.IGNORECASE)
TEMPORAL_QUESTION_RE = re.compile(r"\b(when|what (?:date|year|month|time)|how long|since|"
                                  r"before|after|first|last)\b", re.IGNORECASE)
_WORD_RE = re.compile(r"[A-Za-z0-9']+")
_CAPITAL_RE = re.compile(r"\b([A-Z][a-zA-Z'\-]+(?:\s+[A-Z][a-zA-Z'\-]+)*)")
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def words(text: str) -> list[str]:
    return [w.lower().strip("'") for w in _WORD_RE.findall(text)]


def stem(word: str) -> str:
    """A crude suffix stripper so 'painting'/'painted'/'paints' meet (rules tier only)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    return {stem(w) for w in words(text) if w not in STOPWORDS and len(w) > 2}


def entities(text: str) -> list[str]:
    """Capitalised names in `text`, minus question words and sentence-initial stopwords."""
    found: list[str] = []
    for match in _CAPITAL_RE.findall(text):
        parts = [p for p in match.split() if p.lower() not in STOPWORDS]
        name = " ".join(parts)
        if name and name.lower() not in MONTHS and name not in found:
            found.append(name)
    return found


def split_lines(memory: str) -> list[str]:
    return [line.strip() for line in memory.splitlines() if line.strip()]


def parse_date(text: str) -> date | None:
    """The first '8 May, 2023' / 'May 8, 2023' style date in `text`."""
    m = re.search(rf"(\d{{1,2}})\s+({_MONTH_RE})\w*,?\s+(\d{{4}})", text, re.IGNORECASE)
    if m:
        day, month, year = int(m.group(1)), MONTHS_ANY(m.group(2)), int(m.group(3))
    else:
        m = re.search(rf"({_MONTH_RE})\w*\s+(\d{{1,2}}),?\s+(\d{{4}})", text, re.IGNORECASE)
        if not m:
            return None
        month, day, year = MONTHS_ANY(m.group(1)), int(m.group(2)), int(m.group(3))
    try:
        return date(year, month, day)
    except ValueError:
        return None


def MONTHS_ANY(name: str) -> int:  # noqa: N802 - reads like the table it wraps
    name = name.lower()
    return MONTHS.get(name) or next(v for k, v in MONTHS.items() if k.startswith(name[:3]))


def short_date(raw: str) -> str:
    """'1:56 pm on 8 May, 2023' -> '8 May 2023' (unparseable dates pass through)."""
    d = parse_date(raw)
    return f"{d.day} {d.strftime('%B')} {d.year}" if d else raw.strip()


def fmt(d: date) -> str:
    return f"{d.day} {d.strftime('%B')} {d.year}"


def resolve_relative(expression: str, anchor: date) -> str | None:
    """Turn 'yesterday', 'last week', 'two years ago'... into a date phrase relative to `anchor`."""
    e = expression.lower()
    if e in ("today", "tonight"):
        return fmt(anchor)
    if e == "yesterday" or e == "last night":
        return fmt(anchor - timedelta(days=1))
    if e == "tomorrow":
        return fmt(anchor + timedelta(days=1))
    if e in ("last week", "last weekend"):
        return f"the week before {fmt(anchor)}"
    if e in ("this week", "this weekend"):
        return f"the week of {fmt(anchor)}"
    if e == "next week":
        return f"the week after {fmt(anchor)}"
    if e == "last month":
        first = anchor.replace(day=1) - timedelta(days=1)
        return f"{first.strftime('%B')} {first.year}"
    if e == "this month":
        return f"{anchor.strftime('%B')} {anchor.year}"
    if e == "next month":
        nxt = (anchor.replace(day=28) + timedelta(days=4)).replace(day=1)
        return f"{nxt.strftime('%B')} {nxt.year}"
    if e == "last year":
        return str(anchor.year - 1)
    if e == "this year":
        return str(anchor.year)
    if e == "next year":
        return str(anchor.year + 1)
    if e.startswith("last ") and e[5:] in _WEEKDAYS:
        back = (anchor.weekday() - _WEEKDAYS.index(e[5:])) % 7 or 7
        day = fmt(anchor - timedelta(days=back))
        return f"the {e[5:].capitalize()} before {fmt(anchor)} ({day})"
    m = re.match(r"(a|one|two|three|few) (days|weeks|months|years) ago", e)
    if m:
        n = {"a": 1, "one": 1, "two": 2, "three": 3, "few": 3}[m.group(1)]
        unit = m.group(2)
        if unit == "years":
            return str(anchor.year - n)
        days = {"days": 1, "weeks": 7, "months": 30}[unit] * n
        return fmt(anchor - timedelta(days=days))
    return None


def truncate_words(text: str, limit: int) -> str:
    """At most `limit` whitespace words of `text`, keeping whole lines where possible."""
    out: list[str] = []
    used = 0
    for line in text.splitlines():
        n = len(line.split())
        if used + n > limit:
            if used < limit:
                out.append(" ".join(line.split()[: limit - used]))
            break
        out.append(line)
        used += n
    return "\n".join(out)


def word_count(text: str) -> int:
    return len(text.split())
