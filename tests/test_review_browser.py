"""The review page in a real browser: headless Chromium (Debian's package) opens the
report of the demo and of the kernel fixture series, and the tests read the page as
rendered -- the DOM after load, computed styles, what following a link shows -- and
take a screenshot."""

from __future__ import annotations

import pytest

from klpcc.api import AnalyzeOptions, review, write_review

from .browser import chromium, open_page
from .conftest import FIXTURES

pytestmark = pytest.mark.slow

NOP_COLOUR = "rgba(205, 184, 240, 1)"  # --nop
TARGET_COLOUR = "rgba(255, 243, 168, 1)"  # what :target looks like


def _report(tmp_path, patches, src, **kw):
    out = tmp_path / "report.html"
    write_review(review(AnalyzeOptions(series=[str(patches)], source=str(src), **kw)), out)
    return out


def _follow(driver, link) -> object:
    """Click ``link`` and return the element it leads to."""
    href = link.get_attribute("href")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)  # where a reader sees it
    link.click()
    ident = href.split("#", 1)[1]
    assert driver.execute_script("return location.hash") == "#" + ident
    return driver.find_element("id", ident)


def test_demo_report_in_chromium(tmp_path):
    from selenium.webdriver.common.by import By

    out = _report(tmp_path, FIXTURES / "demo" / "patches", FIXTURES / "demo" / "src")
    with chromium() as d:
        open_page(d, out.as_uri())
        assert d.title.startswith("klpcc review: release 5/5")
        # nothing was fetched: the page is all there is
        assert d.execute_script("return performance.getEntriesByType('resource').length") == 0
        rows = d.find_elements(By.CSS_SELECTOR, "#function-matrix tbody tr")
        cells = d.find_elements(By.CSS_SELECTOR, "#function-matrix td.cell")
        assert len(rows) == 6 and len(cells) == 6 * 5
        assert all(c.is_displayed() for c in cells)
        nop = d.find_element(By.CSS_SELECTOR, "#function-matrix tr.c-nop")
        assert nop.get_attribute("data-key") == "log_line"
        now = nop.find_element(By.CSS_SELECTOR, "td.now")
        assert now.value_of_css_property("background-color") == NOP_COLOUR
        current = d.find_element(By.CSS_SELECTOR, "#function-matrix th.cur")
        assert current.text == "5" and current.value_of_css_property("color") == "rgba(255, 255, 255, 1)"
        # a cell of the release that changed log_line leads to that release's hunk line
        cell = nop.find_element(By.CSS_SELECTOR, 'td.t[data-release="2"] a')
        line = _follow(d, cell)
        assert line.is_displayed() and line.value_of_css_property("background-color") == TARGET_COLOUR
        assert "0002-log-ratelimit" in line.find_element(By.XPATH, "ancestor::div[@class='excerpt']").text
        # the function's name opens its diff, collapsed until then
        body = d.find_element(By.ID, nop.find_element(By.CSS_SELECTOR, "th a").get_attribute("href")
                              .split("#")[1])
        diff = body.find_element(By.XPATH, "..")
        assert diff.tag_name == "details" and diff.get_attribute("open") is None and not body.is_displayed()
        _follow(d, nop.find_element(By.CSS_SELECTOR, "th a"))
        assert diff.get_attribute("open") == "true" and body.is_displayed()
        assert "nop" in body.text
        png = d.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert int.from_bytes(png[16:20], "big") == 1280


def test_kernel_report_findings_in_chromium(tmp_path):
    from selenium.webdriver.common.by import By

    out = _report(tmp_path, FIXTURES / "kernel" / "patches", FIXTURES / "kernel" / "src")
    with chromium() as d:
        open_page(d, out.as_uri())
        errors = d.find_elements(By.CSS_SELECTOR, "#findings .finding.sev-error")
        assert len(errors) == 5
        assert d.find_element(By.ID, "findings-error").text == "Errors (5)"
        # every finding leads to its patch line, shown and highlighted
        for i in range(len(errors)):
            finding = d.find_elements(By.CSS_SELECTOR, "#findings .finding.sev-error")[i]
            link = finding.find_element(By.CSS_SELECTOR, "a.patch-link")
            quoted = finding.find_element(By.CSS_SELECTOR, "code.pl").text
            line = _follow(d, link)
            assert line.is_displayed()
            assert line.value_of_css_property("background-color") == TARGET_COLOUR
            assert line.text.endswith(quoted.strip()) or quoted.strip() in line.text
        # the nop and the drop are called out, and their rows marked
        assert "kvd_check" in d.find_element(By.CSS_SELECTOR, "#backout .nops").text
        assert "sys_kvd_del" in d.find_element(By.CSS_SELECTOR, "#backout .drops").text
        assert d.find_element(By.CSS_SELECTOR, "#function-matrix tr.c-dropped").get_attribute("data-key") \
            == "sys_kvd_del"
        # the release graph is drawn: an arc per pair of releases changing the same function
        arcs = d.find_elements(By.CSS_SELECTOR, "#graph svg path.arc")
        assert len(arcs) == 3 and all(a.size["width"] > 0 for a in arcs)
        d.save_screenshot(str(tmp_path / "kernel.png"))
    assert (tmp_path / "kernel.png").stat().st_size > 20_000


def test_transition_in_chromium(tmp_path):
    from selenium.webdriver.common.by import By

    out = _report(tmp_path, FIXTURES / "demo" / "patches", FIXTURES / "demo" / "src", release=4, installed=2)
    with chromium() as d:
        open_page(d, out.as_uri())
        rows = {r.get_attribute("data-transition"): r.text
                for r in d.find_elements(By.CSS_SELECTOR, "#transition tr[data-transition]")}
        assert rows["nop"].split()[:2] == ["nop", "1"] and "log_line" in rows["nop"]
        assert rows["add"].split()[:2] == ["add", "1"] and "parse_request" in rows["add"]
        assert rows["keep"].split()[:2] == ["keep", "2"]
        col = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#function-matrix td.transition")]
        assert sorted(col) == ["add", "drop", "keep", "keep", "nop"]
