"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium): `charwise serve` as a user starts it, a run started from the form and followed live,
stopped and resumed, sampling with surprisal colours, hostile run files shown as text, and
screenshots at 1280 and 390 px in the test's temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charwise import rundir
from charwise.corpus import load_corpus
from charwise.train import Trainer
from runs import small_config, write_corpus

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    import starlette  # noqa: F401

    has_parts = bool(CHROMIUM and DRIVER)
except ImportError:
    has_parts = False
if not has_parts and os.environ.get("CHARWISE_REQUIRE_BROWSER"):  # CI: never skip these
    raise RuntimeError(
        "CHARWISE_REQUIRE_BROWSER is set but chromium, chromedriver, selenium or "
        "the web extra is missing"
    )
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_parts, reason="needs chromium, chromedriver and .[web,test]"),
]
HOSTILE = "q\"uote '<b>bold<i>&amp;"  # no slash: it is one folder's name
SCRIPT = "<script>window.__xss = 1</script><img src=x onerror='window.__xss = 2'>"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`charwise serve RUNS --no-browser` with one hostile run in RUNS: (url, runs, corpus)."""
    root = tmp_path_factory.mktemp("browser")
    corpus = write_corpus(root / "words.txt", n_words=2000)
    runs = root / "runs"
    cfg = small_config("reference", val_fraction=0.1, eval_every=20)
    Trainer(load_corpus(corpus), cfg, runs / HOSTILE).run(40, progress=False)
    header = rundir.sample_header(40, 1, 30.0, len(SCRIPT))
    rundir.append(runs / HOSTILE / rundir.SAMPLES, [f"{header}\n{SCRIPT}\n\n"])
    server = subprocess.Popen(
        [sys.executable, "-m", "charwise", "serve", str(runs), "--no-browser"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    url = None
    for _ in range(5):
        line = server.stdout.readline()
        if "token=" in line:
            url = line.strip()
            break
    assert url and url.startswith("http://127.0.0.1:"), url
    yield url, runs, corpus
    server.send_signal(2)  # Ctrl-C: the server stops, as any charwise command, with 130
    assert server.wait(30) == 130


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(condition, timeout: float = 60.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or condition}")


def by(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def all_by(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def set_value(driver, css: str, value) -> None:
    """A form field's value as a user leaves it (input and change events fired)."""
    driver.execute_script(
        "const e = document.querySelector(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input', {bubbles: true}));"
        "e.dispatchEvent(new Event('change', {bubbles: true}));",
        css,
        str(value),
    )


def points(driver, css: str) -> int:
    return int(by(driver, css).get_attribute("data-points") or 0)


def screenshots(driver, folder: Path, name: str) -> None:
    """The page at 1280 and 390 px wide; nothing may be wider than the viewport."""
    for width in (1280, 390):
        driver.set_window_size(width, 1000)
        time.sleep(0.5)
        wide = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert wide <= 1, f"{name} overflows {width} px by {wide} px"
        driver.save_screenshot(str(folder / f"{name}-{width}.png"))
    driver.set_window_size(1280, 1000)


def test_hostile_run_files_render_as_text(served, browser, tmp_path):
    url, runs, _ = served
    browser.get(url)
    row = wait(lambda: [r for r in all_by(browser, "#runs-table tr[data-run]")], what="runs")
    assert row[0].get_attribute("data-run") == HOSTILE
    assert HOSTILE in row[0].text and not all_by(browser, "#runs-table b")
    row[0].find_element("css selector", "a.run-link").click()
    wait(lambda: SCRIPT in by(browser, "#samples").text, what="the hostile sample as text")
    assert by(browser, "#run-name").text == HOSTILE
    assert browser.execute_script("return window.__xss") is None
    assert not all_by(browser, "#samples script, #samples img")
    screenshots(browser, tmp_path, "hostile")


def test_start_watch_stop_resume_and_sample_a_run(served, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    url, runs, corpus = served
    browser.get(url)
    wait(lambda: len(all_by(browser, "#new-run [name=model] option")) == 3, what="the form")
    wait(lambda: by(browser, "#new-run [name=m]").get_attribute("value"), what="its defaults")
    form = dict(corpus=corpus, model="gru", m=16, seq_length=10, updates=200_000, name="live")
    form |= dict(optimizer="adam", val_fraction=0.1, eval_every=100)
    for name, value in form.items():
        set_value(browser, f"#new-run [name={name}]", value)
        assert by(browser, f"#new-run [name={name}]").get_attribute("value") == str(value)
    by(browser, "#start-btn").click()
    wait(lambda: browser.current_url.endswith("#/run/live"), what="the run page")
    wait(lambda: "charwise train --out" in by(browser, "#command").text, what="the command")
    # the run's first points wait for its compile where the numba cache lacks a kernel (about
    # 40 s on a Zen 5, longer on a slower CPU: 60 s ran out once on a Zen 3 in CI)
    first = wait(lambda: points(browser, "#loss-chart"), timeout=180, what="training points")
    wait(lambda: points(browser, "#loss-chart") > first, what="the chart to gain points")
    wait(lambda: points(browser, "#val-chart"), what="validation points")
    screenshots(browser, tmp_path, "run-live")

    wait(lambda: by(browser, "#stop-btn").is_enabled(), what="stop enabled")
    by(browser, "#stop-btn").click()
    wait(lambda: by(browser, "#run-status").text == "stopped", what="stopped")
    stopped_at = rundir.describe(runs / "live")["updates"]
    assert 0 < stopped_at < 200_000
    set_value(browser, "#resume-updates", stopped_at + 300)
    by(browser, "#resume-btn").click()
    wait(lambda: "--resume" in by(browser, "#command").text, what="the resume command")
    wait(lambda: by(browser, "#run-status").text == "finished", timeout=120, what="finished")
    assert rundir.describe(runs / "live")["updates"] == stopped_at + 300
    events = by(browser, "#events").text
    assert "resume" in events and "interrupted" in events

    # sampling: a prime, a temperature, characters coloured by surprisal, candidates on hover
    wait(lambda: "best-val" in by(browser, "#sample-model").text, what="the models")
    set_value(browser, "#prime", "the ")
    set_value(browser, "#temperature", 0.5)
    set_value(browser, "#length", 120)
    set_value(browser, "#seed", 7)
    by(browser, "#sample-btn").click()
    wait(lambda: "done" in by(browser, "#sample-status").text, what="the sample")
    chars = all_by(browser, "#sample-out span.ch")
    assert 0 < len(chars) <= 120
    assert by(browser, "#sample-out").text.startswith("the ")
    surprisal = [float(c.get_attribute("data-s")) for c in chars]
    colours = {c.value_of_css_property("background-color") for c in chars}
    assert len(colours) > 3 and max(surprisal) > 1.0
    boldest = chars[max(range(len(chars)), key=surprisal.__getitem__)]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", boldest)
    time.sleep(0.3)  # the page hides the tip on scroll: hover once scrolling is over
    ActionChains(browser).move_to_element(boldest).perform()
    tip = wait(lambda: by(browser, "#tip").is_displayed() and by(browser, "#tip"), what="the tip")
    assert "bits" in tip.text and tip.text.count("%") + tip.text.count("0.") >= 5
    screenshots(browser, tmp_path, "run-sampled")

    set_value(browser, "#score-text", "the cat sat on a mat")
    by(browser, "#score-btn").click()
    wait(lambda: len(all_by(browser, "#score-out span.ch")) == 20, what="the scored text")

    # the runs page: both runs listed, compared on one chart
    by(browser, "#back").click()
    wait(lambda: len(all_by(browser, "#runs-table tr[data-run]")) == 2, what="two runs")
    for box in all_by(browser, "#runs-table input.compare"):
        box.click()
    by(browser, "#compare-btn").click()
    wait(lambda: points(browser, "#compare-chart") > 0, what="the comparison")
    screenshots(browser, tmp_path, "runs")
    assert browser.execute_script("return window.__xss") is None
