#!/usr/bin/env python3
"""Fills the report template (docs/report/report.html) with content pulled from the project's
Markdown docs, so the PDF says what the docs say on the day it is made.

Usage: python3 scripts/report.py OUT.html [--template docs/report/report.html]

The template is HTML with directives in double braces; each names a doc and a heading, and
takes a part of that section (parsed with Python-Markdown). Only glue prose and layout live in
the template. A directive whose doc, heading, paragraph, table or phrase cannot be found stops
the script with a message that says which: the report is never quietly made from stale text.

  {{ date }}                                       today, e.g. 1 December 2026 (REPORT_DATE overrides)
  {{ svg docs/report/architecture.svg }}           an SVG file, inlined
  {{ image docs/flamegraph-fanout.svg }}           an <img> of a file of the repo
  {{ para DOC "Heading" [n=1] [match=REGEX] }}     a paragraph of the section (the n-th, or the first matching)
  {{ list DOC "Heading" [n=1] [match=REGEX] }}     a list of the section
  {{ item DOC "Heading" match=REGEX }}             one list item, its text inline
  {{ span DOC "Heading" match=REGEX [k=1] }}       the k-th `code` after REGEX in the first
                                                   paragraph or list item where it matches, as
                                                   text (-1: the last)
  {{ code DOC "Heading" [n=1] }}                   a fenced code block, as <pre>
  {{ table DOC "Heading" [n=1] [cols=0,2] [rows=REGEX] [widths=20,80] [caption=TEXT] }}
  {{ cell DOC "Heading" row=REGEX col=N [n=1] [span=K] }}
                                                   one cell of a table, inline; span: only its
                                                   K-th `code` span (-1: the last), as text
  {{ row DOC "Heading" match=REGEX [heading=TEXT] [optional] }}
                                                   one row of a table as a paragraph (figure,
                                                   target, measured, command), under a heading
  {{ excerpt DOC "Heading" from=TEXT to=TEXT }}    the text from one phrase to another, inline
  {{ section DOC "Heading" [re] [optional] [caption=TEXT] }}
                                                   every paragraph, list and table of a section;
                                                   `re`: the heading is a regex; `optional`:
                                                   nothing (and a warning) when it is absent

DOC is a path from the repository's root. "Heading" matches a heading's text without its
Markdown marks, case-insensitively, as a prefix; it must match exactly one heading.
"""
import argparse
import datetime
import html
import os
import re
import shlex
import sys

try:
    import markdown
except ImportError:
    sys.exit("report.py: Python-Markdown is missing (pip install markdown); scripts/report.sh installs it")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DIRECTIVE = re.compile(r"\{\{(.*?)\}\}", re.S)


class ReportError(Exception):
    pass


def md_inline(text):
    """Markdown of one paragraph or cell, without the <p> around it."""
    out = markdown.markdown(text.strip(), extensions=["tables", "fenced_code"])
    m = re.fullmatch(r"<p>(.*)</p>", out, re.S)
    return m.group(1) if m else out


def md_cell(text):
    """A table cell: inline Markdown, where a leading "1." or "-" is text, not a list."""
    return md_inline(re.sub(r"^(\d+)\.(\s)", r"\1\\.\2", re.sub(r"^([-*+])(\s)", r"\\\1\2", text.strip())))


def md_block(text):
    return markdown.markdown(text, extensions=["tables", "fenced_code"])


def plain(heading):
    return re.sub(r"[`*_]", "", heading).strip()


class Doc:
    """A Markdown file split into its sections, each the text between its heading and the next
    heading of any level (fenced code is not searched for headings)."""

    cache = {}

    def __init__(self, path):
        full = os.path.join(ROOT, path)
        if not os.path.exists(full):
            raise ReportError(f"{path}: no such file")
        self.path = path
        self.sections = []  # (level, title, body)
        level, title, body, fence = 0, "", [], False
        with open(full, encoding="utf-8") as f:
            for line in f.read().split("\n"):
                if line.lstrip().startswith("```"):
                    fence = not fence
                m = None if fence else re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
                if m:
                    self.sections.append((level, title, "\n".join(body)))
                    level, title, body = len(m.group(1)), m.group(2), []
                else:
                    body.append(line)
        self.sections.append((level, title, "\n".join(body)))

    @classmethod
    def get(cls, path):
        if path not in cls.cache:
            cls.cache[path] = Doc(path)
        return cls.cache[path]

    def section(self, heading, regex=False, optional=False):
        if regex:
            found = [s for s in self.sections if re.search(heading, plain(s[1]), re.I)]
        else:
            found = [s for s in self.sections if plain(s[1]).lower().startswith(plain(heading).lower())]
        if not found:
            if optional:
                return None
            raise ReportError(f'{self.path}: no heading "{heading}" (headings: '
                              + "; ".join(plain(s[1]) for s in self.sections if s[1]) + ")")
        if len(found) > 1:
            raise ReportError(f'{self.path}: "{heading}" matches {len(found)} headings: '
                              + "; ".join(plain(s[1]) for s in found))
        return found[0]


def blocks(body):
    """The blocks of a section's text: ("para" | "list" | "table" | "code", text)."""
    lines, out, i = body.split("\n"), [], 0
    is_item = re.compile(r"\s*([-*+]|\d+\.)\s")
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.lstrip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith("```"):
                j += 1
            out.append(("code", "\n".join(lines[i + 1:j])))
            i = j + 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append(("table", "\n".join(lines[i:j])))
            i = j
        else:
            kind = "list" if is_item.match(line) else "para"
            j = i + 1
            while j < len(lines) and lines[j].strip() and not lines[j].lstrip().startswith("```") \
                    and not lines[j].startswith("|"):
                j += 1
            out.append((kind, "\n".join(lines[i:j])))
            i = j
    return out


def pick(doc, title, items, kind, n=None, match=None):
    chosen = [t for k, t in items if k == kind]
    where = f'{doc.path}, "{plain(title)}"'
    if match is not None:
        hits = [t for t in chosen if re.search(match, " ".join(t.split()))]
        if not hits:
            raise ReportError(f"{where}: no {kind} matches /{match}/")
        return hits[0]
    n = int(n or 1)
    if n > len(chosen):
        raise ReportError(f"{where}: asked for {kind} {n}, the section has {len(chosen)}")
    return chosen[n - 1]


def split_row(line):
    """The cells of a Markdown table row (a | inside backticks does not split)."""
    cells, cur, code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return cells


def parse_table(text):
    rows = [split_row(l) for l in text.strip().split("\n")]
    if len(rows) < 2 or not all(re.fullmatch(r":?-+:?", c.replace(" ", "")) for c in rows[1]):
        raise ReportError("not a Markdown table: " + text[:80])
    return rows[0], rows[2:]


def list_items(text):
    items, cur = [], None
    for line in text.split("\n"):
        m = re.match(r"\s*(?:[-*+]|\d+\.)\s+(.*)", line)
        if m and not line.startswith("   "):
            if cur is not None:
                items.append(cur)
            cur = m.group(1)
        elif cur is not None:
            cur += " " + line.strip()
    if cur is not None:
        items.append(cur)
    return items


def source_note(doc, title):
    return f'<span class="src">{html.escape(doc.path)}, “{html.escape(plain(title))}”</span>'


class Filler:
    def __init__(self):
        self.tables = 0
        self.warnings = []

    def table_html(self, header, rows, cols=None, widths=None, caption=None, note=""):
        if cols is not None:
            header = [header[c] for c in cols]
            rows = [[r[c] if c < len(r) else "" for c in cols] for r in rows]
        out = ['<table>']
        if caption:
            self.tables += 1
            out.append(f"<caption>Table {self.tables}. {caption} {note}</caption>")
        if widths:
            out.append("<colgroup>" + "".join(f'<col style="width:{w}%">' for w in widths) + "</colgroup>")
        out.append("<thead><tr>" + "".join(f"<th>{md_cell(h)}</th>" for h in header) + "</tr></thead><tbody>")
        for r in rows:
            out.append("<tr>" + "".join(f"<td>{md_cell(c)}</td>" for c in r) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out)

    def sides(self, text, labels, doc, title):
        """ "A: x, y. B: x', y'." in a cell as a table of two columns A | B, one row per
        comma-separated item; the rest of the text is returned. When the cell is not of that
        shape any more, the whole text is returned, with a warning."""
        flat = text.replace("**", "")
        a, b = (re.escape(l) for l in labels)
        m = re.search(a + r":\s*(.*?)\.\s+" + b + r":\s*(.*?)\.(?:\s|$)", flat)
        left, right = ([p.strip() for p in g.split(", ")] for g in m.groups()) if m else ([], [])
        if not m or len(left) != len(right):
            self.warnings.append(f'{doc.path}, "{plain(title)}": the {"/".join(labels)} cell is not '
                                 "side by side any more; printed as text")
            return "", text
        rows = [[l, r] for l, r in zip(left, right)]
        table = self.table_html(labels, rows, caption=f"{labels[0]} and {labels[1]}, side by side.",
                                note=source_note(doc, title))
        return table.replace("<table>", '<table class="sides">', 1), (flat[:m.start()] + flat[m.end():]).strip()

    def run(self, words):
        kind, args = words[0], words[1:]
        opts = dict(a.split("=", 1) for a in args if "=" in a)
        pos = [a for a in args if "=" not in a]
        if kind == "date":
            return os.environ.get("REPORT_DATE") or datetime.date.today().strftime("%-d %B %Y")
        if kind in ("svg", "image"):
            path = os.path.join(ROOT, pos[0])
            if not os.path.exists(path):
                raise ReportError(f"{pos[0]}: no such file")
            if kind == "image":
                cls = f' class="{opts["class"]}"' if "class" in opts else ""
                return f'<img{cls} src="file://{html.escape(path)}" alt="{html.escape(opts.get("alt", ""))}">'
            with open(path, encoding="utf-8") as f:
                return re.sub(r"<\?xml.*?\?>", "", f.read(), flags=re.S)
        if len(pos) < 2:
            raise ReportError(f"{{{{ {' '.join(words)} }}}}: needs a doc and a heading")
        doc = Doc.get(pos[0])
        flags = set(pos[2:])
        sec = doc.section(pos[1], regex="re" in flags, optional="optional" in flags)
        if sec is None:
            self.warnings.append(f'{doc.path}: no section /{pos[1]}/ yet; left out of the report')
            return ""
        _, title, body = sec
        items = blocks(body)
        if kind == "para":
            return f"<p>{md_inline(pick(doc, title, items, 'para', opts.get('n'), opts.get('match')))}</p>"
        if kind == "list":
            return md_block(pick(doc, title, items, "list", opts.get("n"), opts.get("match")))
        if kind == "item":
            for lst in (t for k, t in items if k == "list"):
                for it in list_items(lst):
                    if re.search(opts["match"], it):
                        return md_inline(it)
            raise ReportError(f'{doc.path}, "{plain(title)}": no list item matches /{opts["match"]}/')
        if kind == "span":
            texts = [" ".join(t.split()) for k, t in items if k == "para"]
            texts += [it for k, t in items if k == "list" for it in list_items(t)]
            hit = [t for t in texts if re.search(opts["match"], t)]
            if not hit:
                raise ReportError(f'{doc.path}, "{plain(title)}": no paragraph or item matches /{opts["match"]}/')
            spans = re.findall(r"`([^`]+)`", hit[0][re.search(opts["match"], hit[0]).start():])
            k = int(opts.get("k", 1))
            if not spans or abs(k) > len(spans) or k == 0:
                raise ReportError(f'{doc.path}, "{plain(title)}": /{opts["match"]}/ has no `code` number {k}')
            return html.escape(spans[k - 1 if k > 0 else k])
        if kind == "code":
            return f"<pre>{html.escape(pick(doc, title, items, 'code', opts.get('n')))}</pre>"
        if kind in ("table", "cell"):
            header, rows = parse_table(pick(doc, title, items, "table", opts.get("n")))
            if "rows" in opts:
                rows = [r for r in rows if re.search(opts["rows"], r[0])]
                if not rows:
                    raise ReportError(f'{doc.path}, "{plain(title)}": no row matches /{opts["rows"]}/')
            if kind == "cell":
                hit = [r for r in rows if re.search(opts["row"], r[0])]
                if not hit:
                    raise ReportError(f'{doc.path}, "{plain(title)}": no row matches /{opts["row"]}/')
                cell = hit[0][int(opts["col"])]
                if "span" in opts:
                    spans = re.findall(r"`([^`]+)`", cell)
                    if not spans:
                        raise ReportError(f'{doc.path}, "{plain(title)}": the cell has no `code`')
                    return html.escape(spans[int(opts["span"]) - 1 if int(opts["span"]) > 0 else int(opts["span"])])
                return md_cell(cell)
            cols = [int(c) for c in opts["cols"].split(",")] if "cols" in opts else None
            widths = opts["widths"].split(",") if "widths" in opts else None
            return self.table_html(header, rows, cols, widths, opts.get("caption"), source_note(doc, title))
        if kind == "row":
            header, rows = parse_table(pick(doc, title, items, "table", opts.get("n")))
            hit = [r for r in rows if re.search(opts["match"], r[0])]
            if not hit:
                if "optional" in flags:
                    self.warnings.append(f'{doc.path}, "{plain(title)}": no row /{opts["match"]}/ yet; left out of the report')
                    return ""
                raise ReportError(f'{doc.path}, "{plain(title)}": no row matches /{opts["match"]}/')
            cells = dict(zip((plain(h).lower() for h in header), hit[0]))
            out = f"<h3>{html.escape(opts['heading'])}</h3>" if "heading" in opts else ""
            out += f"<p><i>{md_cell(hit[0][0])}</i>"
            if cells.get("target"):
                out += f" — {md_cell(cells['target'])}"
            measured = cells.get("measured", "")
            if "sides" in opts:
                table, measured = self.sides(measured, opts["sides"].split(","), doc, title)
                if table:
                    out += f" (Table {self.tables}):</p>{table}<p>"
                else:
                    out += ": "
            else:
                out += ": "
            out += md_cell(measured)
            if cells.get("command"):
                out += f"{'' if measured.rstrip().endswith('.') else '.'} Command: {md_cell(cells['command'])}."
            return out + f" {source_note(doc, title)}</p>"
        if kind == "excerpt":
            text = " ".join(body.split())
            a = text.find(opts["from"])
            b = text.find(opts["to"], a + 1) if a >= 0 else -1
            if a < 0 or b < 0:
                missing = opts["from"] if a < 0 else opts["to"]
                raise ReportError(f'{doc.path}, "{plain(title)}": the phrase "{missing}" is not there any more')
            span = text[a:b + len(opts["to"])]
            if span.count("**") % 2:
                span = span.replace("**", "")
            if span.count("`") % 2:
                span = span.replace("`", "")
            return md_inline(span)
        if kind == "section":
            out = []
            for k, t in items:
                if k == "table":
                    h, r = parse_table(t)
                    out.append(self.table_html(h, r, caption=opts.get("caption", plain(title)),
                                               note=source_note(doc, title)))
                elif k == "code":
                    out.append(f"<pre>{html.escape(t)}</pre>")
                else:
                    out.append(md_block(t))
            return "\n".join(out)
        raise ReportError(f"unknown directive {kind!r}")

    def fill(self, template):
        def one(m):
            try:
                return self.run(shlex.split(m.group(1)))
            except ReportError:
                raise
            except (KeyError, ValueError, IndexError) as e:
                raise ReportError(f"{{{{{m.group(1)}}}}}: {e!r}")
        return DIRECTIVE.sub(one, template)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--template", default=os.path.join(ROOT, "docs/report/report.html"))
    a = ap.parse_args()
    with open(a.template, encoding="utf-8") as f:
        template = f.read()
    css = os.path.join(os.path.dirname(os.path.abspath(a.template)), "report.css")
    template = template.replace("report.css", "file://" + css)
    filler = Filler()
    try:
        out = filler.fill(template)
    except ReportError as e:
        sys.exit(f"report.py: {e}")
    for w in filler.warnings:
        print(f"report.py: warning: {w}", file=sys.stderr)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(out)


if __name__ == "__main__":
    main()
