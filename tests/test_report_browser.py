"""The report's index.html as a browser shows it: headless Chromium opens a generated page (DevTools
protocol, tests/browser.py) and checks that every image decodes, every link resolves, nothing is
logged as an error, and there is one section (and one nav entry) per group that ran, the groups
that never ran being rows of the skipped-groups table. Skips, with the reason, where no Chromium
can run (.ci/run installs Debian's `chromium`)."""

from __future__ import annotations

from pathlib import Path

import pytest

import test_report as synthetic  # the synthetic run of tests/test_report.py (CPU groups + a skipped CUDA grid)
from browser import BrowserError, Chromium, find_chromium

PAGE_FACTS = """(async () => {
  const imgs = [...document.images];
  const loaded = await Promise.all(imgs.map(i => i.decode().then(() => i.naturalWidth > 0, () => false)));
  return {
    images: imgs.map((i, k) => ({alt: i.alt, loaded: loaded[k]})),
    links: [...document.querySelectorAll('a[href]')].map(a => {
      const h = a.getAttribute('href');
      return {href: h, url: a.href, found: h.startsWith('#') ? !!document.getElementById(decodeURIComponent(h.slice(1))) : null};
    }),
    sections: [...document.querySelectorAll('section > h3')].map(h => h.textContent),
    nav: [...document.querySelectorAll('nav a')].map(a => a.textContent),
    text: document.body.innerText,
  };
})()"""


@pytest.fixture(scope="module")
def browser():
    if not find_chromium():
        pytest.skip("no Chromium on this machine (chromium, chromium-browser, google-chrome or $ATTNBENCH_CHROMIUM); "
                    ".ci/run installs Debian's chromium")
    try:
        b = Chromium().__enter__()
    except BrowserError as exc:
        pytest.skip(f"Chromium cannot run here: {exc}")
    try:
        yield b
    finally:
        b.__exit__(None, None, None)


def page_problems(browser: Chromium, page: Path) -> tuple[dict, list[str]]:
    """Open `page`; its facts (PAGE_FACTS) and what is wrong with it as a browser sees it."""
    browser.open(page)
    facts = browser.evaluate(PAGE_FACTS)
    problems = [f"image not loaded: {i['alt']}" for i in facts["images"] if not i["loaded"]]
    for link in facts["links"]:
        if link["found"] is False:
            problems.append(f"link to a missing anchor: {link['href']}")
        elif link["found"] is None:  # not in-page: a file next to the page may do, the network never
            target = Path(link["url"].removeprefix("file://").split("#")[0])
            if not link["url"].startswith("file://") or not target.exists():
                problems.append(f"link that does not resolve: {link['href']}")
    problems += browser.console_errors()
    return facts, problems


def test_the_report_page_in_a_browser(tmp_path, browser):
    from harness.report.build import write_report
    from harness.report.groups import make_groups, measured
    from harness.results.rows import read_rows

    run = synthetic.make_run(tmp_path / "results")
    out = write_report(run, out_dir=tmp_path / "report")
    facts, problems = page_problems(browser, out / "index.html")
    assert problems == []
    assert len(facts["images"]) == len(list(out.glob("*.png"))) > 0
    groups = make_groups(read_rows(run))
    ran = [g for g in groups if measured(g)]
    assert len(facts["sections"]) == len(ran) == 3 and facts["nav"] == facts["sections"]
    assert all(title.startswith(f"{g.grid} · ") for title, g in zip(facts["sections"], ran))
    assert {link["href"] for link in facts["links"]} == {f"#s{i}" for i in range(2, 2 + len(ran))}
    skipped = [g for g in groups if not measured(g)]
    assert [g.grid for g in skipped] == ["cuda"] and "Skipped groups: 1 (no case measured)" in facts["text"]
    assert "cuda" not in " ".join(facts["sections"]) and "unknown" not in facts["text"]


def test_the_browser_check_sees_a_broken_page(tmp_path, browser):
    """The check is not blind: a broken image, dangling links and a console error are each caught."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img alt="bad" src="data:image/png;base64,AAAA">'
                    '<a href="#nowhere">x</a><a href="missing.html">y</a><section id="s1"><h3>one</h3></section>'
                    '<script>console.error("boom")</script></body></html>')
    _, problems = page_problems(browser, page)
    assert "image not loaded: bad" in problems
    assert "link to a missing anchor: #nowhere" in problems and "link that does not resolve: missing.html" in problems
    assert any("boom" in p for p in problems), problems
