"""Document and model text as Markdown that can format but never link, load
or inject anything, parsed in linear time.

Streamlit renders Markdown with react-markdown and GFM. Besides `[..](..)`
links and images, reference definitions, `<...>` autolinks, raw HTML,
KaTeX and its own `:directive[...]`s, it turns bare `http://`, `www.` and
e-mail addresses into links *after* escapes are decoded, so escaping alone
does not stop those: a word joiner (U+2060, invisible) goes inside each.

Every pattern here either matches a bounded length at each position or is a
single character class, and the scanners make one pass, so hostile text
(50,000 spaces, 200,000 characters without a marker) costs linear time.
"""

from __future__ import annotations

import re
from bisect import bisect_right

MAX_MODEL_CHARS = 20_000  # model text shown at most; the rest is cut, visibly
CUT_NOTE = "… (cut)"
WORD_JOINER = "\u2060"

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$=^&@])")
# In a one-line name, '.' and '-' stay readable ("operations-handbook.pdf");
# only at the start could they make a list.
_NAME_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~:$=^&@])")
_LIST_START = re.compile(r"^(\d{0,9})([-.])")
# In model text, what could start a link, an image, HTML, math, an entity or
# a directive; emphasis, lists, headings, tables and quotes stay formatting.
_MODEL_SPECIAL = re.compile(r"(\[\d{1,6}\])|([\\`\[\]<(!&:@$])")
# In a Markdown file (an export) no Streamlit directive, math or autolinking
# applies: brackets and angle brackets are all that make links, images and HTML.
_FILE_SPECIAL = re.compile(r"(\[\d{1,6}\])|([\\`\[\]<])")
# Where Streamlit's autolinking would start ('http(s)' before ':', 'www'
# before '.', any '@'), and its icon shortcode (':material/...:').
# Zero-width and of bounded reach.
_AUTOLINK = re.compile(
    r"(?<=https)(?=:)|(?<=http)(?=:)|(?<=www)(?=\.)|(?<=@)|(?<=:)(?=material/)", re.IGNORECASE
)
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_FENCE = re.compile(r"( {0,3})(`{3,}|~{3,})(.*)")
_INFO = re.compile(r"[\w.+#-]{0,40}")
_BACKTICKS = re.compile(r"`+")
_MARKER = re.compile(r"\[(\d{1,6})\]")


def _unlink(text: str) -> str:
    return _AUTOLINK.sub(WORD_JOINER, text)


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def cut(text: str) -> tuple[str, bool]:
    """`text` up to MAX_MODEL_CHARS, and whether anything was cut."""
    return text[:MAX_MODEL_CHARS], len(text) > MAX_MODEL_CHARS


def escape(text: str) -> str:
    """Document text as literal Markdown: nothing in it is formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _unlink(_lines(text))).replace("\n", "  \n")


def plain(name: str) -> str:
    """A file name or path, for a caption or a label, on one line and literal."""
    one_line = " ".join(name.split())
    return _LIST_START.sub(r"\1\\\2", _NAME_SPECIAL.sub(r"\\\1", _unlink(one_line)))


def defuse(text: str, *, for_file: bool = False) -> str:
    """Model text as Markdown that keeps its formatting (emphasis, lists,
    headings, tables, code) while nothing in it can become a link, an image
    or HTML. Citation markers like [1] are kept as they are: with every
    other bracket escaped there can be no reference definition to make
    them links. Over MAX_MODEL_CHARS it is cut, with a note saying so.
    `for_file`: for a Markdown file rather than the page, with the fewest
    escapes that do this (a colon or a parenthesis stays as it is)."""
    text, was_cut = cut(text)
    special = _FILE_SPECIAL if for_file else _MODEL_SPECIAL
    lines, out, i = _lines(text).split("\n"), [], 0
    while i < len(lines):
        fence = _FENCE.fullmatch(lines[i])
        if fence is None or (fence[2][0] == "`" and "`" in fence[3]):
            out.append(_model_line(lines[i], special))
            i += 1
            continue
        end = _fence_end(lines, i + 1, fence[2])
        out += _fenced(fence, lines[i + 1 : end])
        i = end + 1
    shown = "\n".join(out)
    return f"{shown}\n\n{CUT_NOTE}" if was_cut else shown


def _fence_end(lines: list[str], start: int, run: str) -> int:
    closing = re.compile(rf" {{0,3}}{re.escape(run[0])}{{{len(run)},}}[ \t]*")
    for j in range(start, len(lines)):
        if closing.fullmatch(lines[j]):
            return j
    return len(lines)


def _fenced(fence: re.Match[str], body: list[str]) -> list[str]:
    """A fenced code block, re-emitted so that only our own fence can close
    it (longer than any run of its character inside), every line indented
    at least as much as the opening fence (so no list item or quote it sits
    in can end before it), and the info string reduced to a language name.
    Its content is verbatim: nothing inside a code block is a link."""
    indent, char = fence[1], fence[2][0]
    longest = max((len(r) for r in re.findall(re.escape(char) + "+", "\n".join(body))), default=0)
    bar = char * max(len(fence[2]), longest + 1)
    info = fence[3].strip()
    info = info if _INFO.fullmatch(info) else ""
    content = [indent + _dedent(line, len(indent)) for line in body]
    return [f"{indent}{bar}{info}", *content, f"{indent}{bar}"]


def _dedent(line: str, width: int) -> str:
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, width) :]


def _model_line(line: str, special: re.Pattern[str]) -> str:
    # A table splits its cells at '|' before it finds code spans, so a code
    # span never crosses one.
    return "|".join(_code_spans(cell, special) for cell in line.split("|"))


def _code_spans(text: str, special: re.Pattern[str] = _MODEL_SPECIAL) -> str:
    """Inline code kept verbatim (a backtick run up to the next run of the
    same length, as CommonMark pairs them); everything else escaped."""
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(text)]
    closer: list[int | None] = [None] * len(runs)
    last: dict[int, int] = {}
    for k in range(len(runs) - 1, -1, -1):
        length = runs[k][1] - runs[k][0]
        closer[k] = last.get(length)
        last[length] = k
    out, at, k = [], 0, 0
    while k < len(runs):
        j = closer[k]
        if j is None:
            k += 1  # an unpaired run is text: escaped below
            continue
        out += [_model_text(text[at : runs[k][0]], special), text[runs[k][0] : runs[j][1]]]
        at, k = runs[j][1], j + 1
    return "".join(out) + _model_text(text[at:], special)


def _model_text(text: str, special: re.Pattern[str] = _MODEL_SPECIAL) -> str:
    if special is _FILE_SPECIAL:
        return special.sub(lambda m: m[1] or "\\" + m[2], text)
    return special.sub(lambda m: m[1] or "\\" + m[2], _unlink(text))


def quoted(answer: str, n: int) -> list[str]:
    """The sentences of `answer` that carry the marker [n]: the text before
    each group of markers ([2] [1] or [2][1]), back to the previous group or
    bracket. One pass over the (capped) answer."""
    pieces = _MARKER.split(cut(answer)[0])  # text, number, text, number, ..., text
    quotes, sentence, cited = [], pieces[0], set()
    for k in range(1, len(pieces), 2):
        cited.add(int(pieces[k]))
        after = pieces[k + 1]
        if after.strip() or k + 2 >= len(pieces):  # the group ends here
            if n in cited:
                clause = sentence[max(sentence.rfind("["), sentence.rfind("]")) + 1 :].strip()
                if clause:
                    quotes.append(clause)
            sentence, cited = after, set()
    return quotes


def highlighted(span: str, quotes: list[str]) -> str:
    """`span` as Markdown on an orange background, quotes in bold. The
    background is one directive, which a blank line would end half-way (its
    closing bracket then shows as text), so blank lines inside the span
    become plain line breaks."""
    one_paragraph = _BLANK_LINES.sub("\n", _lines(span))
    return f":orange-background[{_embolden(one_paragraph, quotes)}]"


def _embolden(span: str, quotes: list[str]) -> str:
    """`span` escaped, with each verbatim quote (line breaks in the source
    do not matter) in bold. Quotes are found with `str.find` in the span's
    words joined by single spaces, then mapped back to the span."""
    words = [m.span() for m in re.finditer(r"\S+", span)]
    flat = " ".join(span[s:e] for s, e in words)
    starts, offset = [], 0
    for s, e in words:
        starts.append(offset)
        offset += e - s + 1
    marks = []
    for quote in dict.fromkeys(quotes):
        needle = " ".join(quote.split())
        found = flat.find(needle) if len(quote.split()) >= 3 else -1
        if found >= 0:
            first = bisect_right(starts, found) - 1
            last = bisect_right(starts, found + len(needle) - 1) - 1
            end = words[last][0] + found + len(needle) - starts[last]
            marks.append((words[first][0] + found - starts[first], end))
    out, at = [], 0
    for start, end in sorted(marks):
        if start >= at:
            out += [escape(span[at:start]), "**", escape(" ".join(span[start:end].split())), "**"]
            at = end
    return "".join(out) + escape(span[at:])


# What a spreadsheet reads as the start of a formula (OWASP's CSV injection
# list: tab and carriage return too).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: str) -> str:
    """`value` for a table the app shows and lets users download as CSV: one
    that would start a formula gets a leading apostrophe, which spreadsheets
    take as "text" and Streamlit shows as it is."""
    return "'" + value if value.startswith(_FORMULA_START) else value
