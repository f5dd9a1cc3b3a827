"""The report document: its model (Report -> Section -> Table / Figure, plain text only) and its
two renderings, index.html and report.md. harness.report.build fills the model; nothing here reads results.

index.html is self-contained: inline CSS, PNGs as data: URIs, no script, no network reference,
so it opens from disk or as a CI artifact. Every piece of text from the results (names, messages,
environment strings) goes through html.escape. report.md is GitHub-flavoured markdown for pasting
into a PR: tables, images by their PNG file names (next to it), the same text escaped for markdown.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from harness.vocab import FAILED_STATUSES

MD_MESSAGE_CHARS = 240  # report.md cells are cut here (a traceback stays whole in index.html)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    numeric: bool = True  # right-align every column after the first
    html_only: bool = False  # long per-case listings: collapsed in index.html, left out of report.md


@dataclass
class Figure:
    file: str
    png: bytes
    alt: str


@dataclass
class Section:
    title: str
    level: int = 2
    paragraphs: list[str] = field(default_factory=list)
    bullets_title: str = ""
    bullets: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


@dataclass
class Report:
    title: str
    sections: list[Section]


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 0 auto; padding: 1.5em 2em; max-width: 1640px; }
h1 { font-size: 1.6em; margin-top: 0; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
h3 { margin-top: 2em; font-size: 1.1em; }
nav ul { columns: 2; font-size: .92em; }
table { border-collapse: collapse; margin: .4em 0 1.2em; font-size: .92em; }
caption { text-align: left; font-weight: 600; padding: .3em 0; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.msg { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .9em; max-width: 60em; }
td.bad { color: #cf222e; } td.skip { color: #6e7781; } td.noisy { color: #9a6700; }
p.note { color: #57606a; font-size: .9em; margin-top: -.8em; max-width: 40em; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; }
.tables { display: flex; flex-wrap: wrap; gap: 0 2.5em; align-items: flex-start; } .tables .wide { flex-basis: 100%; }
figure { margin: 0; max-width: 100%; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
details { margin: .5em 0 1em; } summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 3em; color: #57606a; font-size: .85em; }
"""


def render_html(report: Report) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(report.title)}</title>", f"<style>{CSS}</style>", "</head><body>",
           f"<h1>{e(report.title)}</h1>"]
    groups = [(i, s) for i, s in enumerate(report.sections) if s.level >= 3]
    if len(groups) > 1:  # in-page links only
        out.append("<nav><strong>Groups</strong><ul>")
        out += [f'<li><a href="#s{i}">{e(s.title)}</a></li>' for i, s in groups]
        out.append("</ul></nav>")
    for i, sec in enumerate(report.sections):
        lvl = min(max(sec.level, 2), 4)
        out.append(f'<section id="s{i}"><h{lvl}>{e(sec.title)}</h{lvl}>')
        out += [f"<p>{e(p)}</p>" for p in sec.paragraphs]
        if sec.figures:
            out.append('<div class="figs">')
            for fig in sec.figures:
                data = base64.b64encode(fig.png).decode("ascii")
                out.append(f'<figure><img alt="{e(fig.alt)}" src="data:image/png;base64,{data}"></figure>')
            out.append("</div>")
        if sec.bullets_title:
            out.append(f"<p>{e(sec.bullets_title)}</p>")
        if sec.bullets:
            out.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in sec.bullets) + "</ul>")
        if sec.tables:
            out.append('<div class="tables">' + "".join(_html_table(t) for t in sec.tables) + "</div>")
        out.append("</section>")
    out.append("<footer>Written by <code>attnbench report</code> from the results directory; "
               "it measures nothing itself.</footer></body></html>")
    return "\n".join(out) + "\n"


def _html_table(t: Table) -> str:
    e = html.escape
    rows = []
    for row in t.rows:
        cells = [f"<td>{e(str(row[0]))}</td>" if row else ""]
        for c in row[1:]:
            cls = _cell_class(str(c), t.numeric)
            cells.append(f'<td class="{cls}">{e(str(c))}</td>' if cls else f"<td>{e(str(c))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in t.headers) + "</tr>"
    body = f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    if t.html_only:
        return f'<details class="wide"><summary>{e(t.title)} ({len(t.rows)} rows)</summary>{body}{note}</details>'
    return f"<div><table><caption>{e(t.title)}</caption>" + body.removeprefix("<table>") + note + "</div>"


def _cell_class(c: str, numeric: bool) -> str:
    if c in FAILED_STATUSES:
        return "num bad" if numeric else "bad"
    if c == "skipped":
        return "num skip" if numeric else "skip"
    if numeric:
        return "num noisy" if c.endswith("~") else "num"
    return "msg" if len(c) > 40 else ""


def render_markdown(report: Report) -> str:
    out = [f"# {_md(report.title)}", ""]
    for sec in report.sections:
        out += ["#" * sec.level + " " + _md(sec.title), ""]
        for p in sec.paragraphs:
            out += [_md(p), ""]
        for fig in sec.figures:
            out += [f"![{_md(fig.alt)}]({fig.file})", ""]
        if sec.bullets_title:
            out += [_md(sec.bullets_title), ""]
        if sec.bullets:
            out += [f"- {_md(b)}" for b in sec.bullets] + [""]
        for t in sec.tables:
            if t.html_only:
                continue
            out += [f"**{_md(t.title)}**", ""]
            out.append("| " + " | ".join(_md(h) for h in t.headers) + " |")
            out.append("|" + "|".join(["---"] + [("---:" if t.numeric else "---")] * (len(t.headers) - 1)) + "|")
            out += ["| " + " | ".join(_md(_short(c)) for c in row) + " |" for row in t.rows]
            out.append("")
            if t.note:
                out += [f"_{_md(t.note)}_", ""]
    return "\n".join(out).rstrip() + "\n"


def _short(s: str) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= MD_MESSAGE_CHARS else s[: MD_MESSAGE_CHARS - 1] + "…"


def _md(s) -> str:
    """Plain text for a markdown cell or line: no HTML, no table breaks, no stray emphasis."""
    s = " ".join(str(s).split())
    for a, b in (("\\", "\\\\"), ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("*", "\\*"),
                 ("`", "\\`"), ("[", "\\["), ("]", "\\]")):
        s = s.replace(a, b)
    return s


def write_documents(report: Report, out) -> None:
    """The report's PNGs, report.md and a self-contained index.html into the folder `out`."""
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for sec in report.sections:
        for fig in sec.figures:
            (out / fig.file).write_bytes(fig.png)
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out / "index.html").write_text(render_html(report), encoding="utf-8")
