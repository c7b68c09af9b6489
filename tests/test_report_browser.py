"""report.html as a browser shows it: headless Chromium (Debian's `chromium` + `chromium-driver`)
driven by selenium. Every image decodes, no console errors, no horizontal scrolling at 1280 px,
the tables of report.md are all there; a screenshot is saved beside the report.

Also a CLI for CI: `python -m tests.test_report_browser RUNS/report.html` checks a real report.
Chromium missing: the tests are skipped with the reason and how to install it (pytest's `-ra`
summary prints it), except under CI=true (.ci/run installs Chromium), where it is a FAILURE.
SEGVAE_SKIP_BROWSER=1 skips on request, also outside CI only.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.fixtures import write_results
from tests.helpers import skip_unless_ci

WIDTH, HEIGHT = 1280, 900
SCREENSHOT = "report-screenshot.png"
INSTALL = ("to run it: sudo apt-get install -y chromium chromium-driver (Debian/Ubuntu; .ci/run does this) "
           "and pip install selenium (in the `test` extra)")


class BrowserMissing(RuntimeError):
    pass


def _binaries() -> tuple[str, str]:
    browser = next((b for b in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if b), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        raise BrowserMissing(f"headless browser check: {missing} not found on PATH; {INSTALL}")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise BrowserMissing(f"headless browser check: the selenium package is not installed; {INSTALL}") from None
    return browser, driver


def open_browser():
    """A headless Chromium with its console log kept, viewport exactly WIDTH x HEIGHT CSS pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = _binaries()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    return d


IMAGES_JS = "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"
SCROLL_JS = "const e = document.documentElement; return [e.scrollWidth, e.clientWidth, document.body.scrollHeight]"
TABLES_JS = ("return Array.from(document.querySelectorAll('table')).map(t => "
             "[Array.from(t.querySelectorAll('th')).map(h => h.textContent), t.querySelectorAll('tbody tr').length])")


def check_report(html: Path) -> dict:
    """Open html in the browser and return what it saw; AssertionError naming the first problem."""
    html = Path(html).resolve()
    d = open_browser()
    try:
        d.get(html.as_uri())
        d.execute_script("return document.readyState")  # get() waits for the load event
        images = d.execute_script(IMAGES_JS)
        scroll_w, client_w, page_h = d.execute_script(SCROLL_JS)
        tables = d.execute_script(TABLES_JS)
        errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the whole page in one screenshot
                          {"width": WIDTH, "height": min(int(page_h), 16000), "deviceScaleFactor": 1, "mobile": False})
        d.save_screenshot(str(html.parent / SCREENSHOT))
    finally:
        d.quit()
    broken = [alt for complete, w, h, alt in images if not (complete and w > 0 and h > 0)]
    assert not broken, f"{html}: {len(broken)} image(s) did not decode: {broken[:5]}"
    assert not errors, f"{html}: console errors: {errors[:5]}"
    assert scroll_w <= client_w, f"{html}: scrolls horizontally at {WIDTH} px (content {scroll_w} px wide > {client_w})"
    assert tables and all(n > 0 for _, n in tables), f"{html}: missing or empty tables: {tables}"
    md = html.with_suffix(".md")
    if md.is_file():  # both are rendered from the same blocks: the same tables in the same order
        from tests.fixtures import md_tables

        def plain(cell: str) -> str:  # undo report.md's escaping of | < > &
            return cell.replace("\\|", "|").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")

        expected = [[plain(c) for c in t["columns"]] for t in md_tables(md.read_text())]
        assert [cols for cols, _ in tables] == expected, f"{html}: tables differ from {md.name}"
    return {"images": images, "tables": tables, "scroll_width": scroll_w, "client_width": client_w,
            "screenshot": html.parent / SCREENSHOT}


def _widen(runs: Path) -> None:
    """What makes real reports wide: a bench over many batch sizes, long unbroken paths."""
    import json

    bench = json.loads((runs / "bench.json").read_text())
    for r in [r for r in bench["results"] if r["scenario"] == "offline" and r["batch_size"] == 8]:
        bench["results"] += [{**r, "batch_size": bs, "samples_per_s": 123.4 + bs} for bs in (2, 4, 16, 32, 64, 128, 256)]
    (runs / "bench.json").write_text(json.dumps(bench))
    pipe = json.loads((runs / "pipeline.json").read_text())
    pipe["data_root"] = "/data/" + "very-long-folder-name_" * 20
    pipe["commands"].append("segvae bench " + "runs/unet-mp-tr-bce-with-a-long-name," * 12)
    (runs / "pipeline.json").write_text(json.dumps(pipe))


def require_browser() -> None:
    """In the test body: skip saying what is missing and how to install it, or, under CI=true, fail."""
    if os.environ.get("SEGVAE_SKIP_BROWSER") == "1":
        skip_unless_ci("SEGVAE_SKIP_BROWSER=1: headless browser check skipped on request")
    try:
        _binaries()
    except BrowserMissing as e:
        skip_unless_ci(str(e))


def test_report_in_headless_chromium(tmp_path):
    require_browser()
    from PIL import Image

    from harness.report import build_report

    runs = tmp_path / "runs"
    write_results(runs)
    _widen(runs)
    html = build_report(runs)["html"]
    seen = check_report(html)
    assert len(seen["images"]) == len(list((runs / "report_assets").glob("*.png")))  # every figure shown
    headers = [" ".join(cols) for cols, _ in seen["tables"]]
    for col in ("test Dice", "test ELBO (nats)", "judge test acc (real images)", "samples/s @bs8", "reason"):
        assert any(col in h for h in headers), col
    # the bench table is wider than the page: it scrolls inside its box, the page does not
    wide = Path(html).read_text().count('<div class="scroll">')
    assert wide == len(seen["tables"]) and seen["scroll_width"] <= 1280
    shot = Image.open(seen["screenshot"])
    assert shot.size[0] == 1280 and shot.size[1] > 900  # the whole page, not just the first screen


def test_checker_catches_a_broken_page(tmp_path):
    """The checks can fail: a broken image, a page wider than the screen and a script error."""
    require_browser()
    page = tmp_path / "report.html"
    page.write_text('<!DOCTYPE html><html><body><div style="width:2000px">wide</div>'
                    '<img alt="broken" src="data:image/png;base64,AAAA"><table><tbody><tr><td>1</td></tr></tbody>'
                    '</table><script>undefinedFunction()</script></body></html>')
    with pytest.raises(AssertionError, match="did not decode"):
        check_report(page)
    page.write_text('<!DOCTYPE html><html><body><div style="width:2000px">wide</div>'
                    '<table><tbody><tr><td>1</td></tr></tbody></table></body></html>')
    with pytest.raises(AssertionError, match="scrolls horizontally"):
        check_report(page)
    page.write_text('<!DOCTYPE html><html><body><table><tbody><tr><td>1</td></tr></tbody></table>'
                    '<script>undefinedFunction()</script></body></html>')
    with pytest.raises(AssertionError, match="console errors"):
        check_report(page)


if __name__ == "__main__":  # CI: check a real report, e.g. the smoke's
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.test_report_browser RUNS/report.html")
    try:
        out = check_report(Path(sys.argv[1]))
    except BrowserMissing as e:
        sys.exit(str(e))
    print(f"browser check ok: {len(out['images'])} images decoded, {len(out['tables'])} tables, page "
          f"{out['scroll_width']} px wide at {WIDTH} px, no console errors; screenshot {out['screenshot']}")
