"""The dashboard as a person sees it: headless Chromium on ``metab-opt dashboard`` (loopback).

test_dashboard.py checks the HTTP API; this checks the RENDERED pages of optuna-dashboard's
React app for the same small study (tests/_dashboard_fixtures.py): the study is listed; a trial's
page shows its user attributes, its note (the logbook entry) and its plot loaded as an image;
the study note page shows the memory and the exploration tree; the study page lists the study
artifacts. Screenshots are saved in the test's tmp_path.

It needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``; ``.ci/run`` installs them) and selenium (the ``test`` extra). Passing
the driver's path keeps Selenium Manager from downloading anything. Without them the test is
skipped, except in CI (``CI`` set), where it fails. Runtime: about 15 s.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
from _dashboard_fixtures import NAME, get_json, serve

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
WAIT = 20.0  # seconds for one page to render (the React app polls the API)
# Headless, and nothing that reaches beyond the loopback dashboard (updates, sync, QUIC).
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,2000")


def _unavailable(reason: str) -> NoReturn:
    """Skip, or fail in CI: CI must run this test (as tests/test_postgres.py does)."""
    if IN_CI:
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    """Headless Chromium through Debian's chromedriver, with a throw-away profile."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        _unavailable(f"{' and '.join(missing)} missing (Debian: apt-get install chromium "
                     f"chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="metab_opt_chromium_") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            drv.set_page_load_timeout(WAIT)
            yield drv
        finally:
            drv.quit()


@pytest.fixture(scope="module")
def dashboard(finished_study: dict[str, Any]) -> Iterator[str]:
    with serve(finished_study["root"]) as base:
        yield base


def _wait(drv: WebDriver, what: str, condition: Callable[[WebDriver], Any]) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, WAIT).until(condition)
    except TimeoutException:
        body = drv.execute_script("return document.body ? document.body.innerText : ''")
        pytest.fail(f"{what}: not rendered in {WAIT:.0f} s on {drv.current_url}\n"
                    f"page text:\n{str(body)[:2000]}")


def _text(drv: WebDriver) -> str:
    return str(drv.execute_script("return document.body ? document.body.innerText : ''"))


def _loaded_image(drv: WebDriver, alt: str) -> Callable[[WebDriver], Any]:
    """A wait condition: the <img alt=ALT> has loaded (decoded, naturalWidth > 0)."""
    def check(d: WebDriver) -> Any:
        return d.execute_script(
            "const i = [...document.images].find(i => i.alt === arguments[0]);"
            "return i && i.complete && i.naturalWidth > 0 ? i : null;", alt)
    return check


def _screenshot(drv: WebDriver, path: Path, element: Any = None) -> Path:
    if element is not None:
        drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    assert drv.save_screenshot(str(path)), path
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    return path


def test_the_dashboard_renders_the_study(driver: WebDriver, dashboard: str,
                                         finished_study: dict[str, Any],
                                         tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    study_id = get_json(f"{dashboard}/api/studies")["study_summaries"][0]["study_id"]
    study_href = f"/dashboard/studies/{study_id}"

    # The study list: a link to the study, titled with its name.
    driver.get(f"{dashboard}/dashboard")
    link = _wait(driver, "the study list", lambda d: next(
        (a for a in d.find_elements(By.TAG_NAME, "a")
         if (a.get_attribute("href") or "").endswith(study_href)), None))
    assert NAME in link.text

    # Trial 1's page: its note (the logbook entry), its user attributes, its plot.
    driver.get(f"{dashboard}{study_href}/trials?numbers=1")
    _wait(driver, "trial 1's page", lambda d: "Trial 1 (trial_id=" in _text(d))
    attrs_box = _wait(driver, "the user attributes", lambda d: next(
        iter(d.find_elements(By.XPATH, "//p[normalize-space()='User Attributes']/..")), None))
    attrs = dict(line.split(" ", 1) for line in attrs_box.text.splitlines()[1:] if " " in line)
    assert attrs["status"] == "partial" and attrs["diagnosis"] == "poor dynamics"
    assert attrs["parent_rule"] == "UCB top node" and attrs["parent_id"] == "0"
    assert float(attrs["rate_constants_R2"]) == pytest.approx(0.6)
    text = _text(driver)
    assert "Iter 1: partial" in text  # the note's heading, rendered from markdown
    assert re.search(r"^Parent rule: UCB top node$", text, re.M), text
    assert re.search(r"^Observation: ΔR² \+0\.100 vs parent 0 \(0\.500 -> 0\.600\)", text, re.M)
    plot = _wait(driver, "trial 1's plot", _loaded_image(driver, "rate_constants_0001.png"))
    assert driver.execute_script("return arguments[0].naturalWidth", plot) == 3  # png(3, 2)
    _screenshot(driver, tmp_path / "trial.png")

    # The study note: the memory, then the exploration tree, inline and loaded.
    driver.get(f"{dashboard}{study_href}/note")
    _wait(driver, "the study note", lambda d: f"{NAME} — working memory" in _text(d))
    memory_heading = finished_study["memory"].splitlines()[0].lstrip("# ").strip()
    assert memory_heading in _text(driver)
    tree = _wait(driver, "the tree in the note", _loaded_image(driver, "exploration_tree.png"))
    assert driver.execute_script("return arguments[0].naturalWidth", tree) > 100
    assert driver.find_element(By.LINK_TEXT, f"{NAME}_analysis.md")
    _screenshot(driver, tmp_path / "note.png", tree)

    # The study page lists both study artifacts, the tree as a loaded thumbnail.
    driver.get(f"{dashboard}{study_href}")
    _wait(driver, "the study artifacts", lambda d: "Study Artifacts" in _text(d))
    _wait(driver, "the tree's thumbnail", _loaded_image(driver, "exploration_tree.png"))
    assert f"{NAME}_analysis.md" in _text(driver)
