"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, which `make
test` installs): the runs table shows the runs, and a running run that finishes an epoch while
the page is open gets its new point without a reload."""

from __future__ import annotations

from pathlib import Path

from conftest import UiServer, epoch_line
from serve.test_serve_playground import browser  # noqa: F401  (the fixture: skips only without chromium)


def test_a_new_epoch_appears_on_the_open_page_without_a_reload(browser, ui, ui_runs: Path, trained: Path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(ui.url + "/#run=live")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.run"))
    rows = {r.get_attribute("data-run"): r.text for r in browser.find_elements(By.CSS_SELECTOR, "tr.run")}
    assert "running" in rows["live"] and "finished" in rows["shapes"] and "train.lr=0.0123" in rows["live"]
    curves = browser.find_element(By.ID, "curves")
    wait.until(lambda d: curves.get_attribute("data-points") == "2")
    assert "live" in browser.find_element(By.ID, "run-title").text
    browser.execute_script("window.stillTheSamePage = true")
    with open(ui_runs / "live" / "metrics.jsonl", "a") as handle:
        handle.write(epoch_line(trained, 3))
    wait.until(lambda d: curves.get_attribute("data-points") == "3")
    assert curves.get_attribute("data-last-x") == "3"
    assert browser.execute_script("return window.stillTheSamePage") is True  # no reload
    losses = browser.find_element(By.CSS_SELECTOR, "svg[data-chart=loss]")
    assert losses.get_attribute("data-points") == "3"
    assert len(losses.find_elements(By.TAG_NAME, "circle")) == 3 * 2  # train_loss and val_loss, 3 epochs each
    assert browser.find_element(By.ID, "error").text == ""


def test_a_runs_report_shows_on_the_page(browser, ui):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(ui.url + "/#run=shapes")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "shapes" in d.find_element(By.ID, "run-title").text)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#report img"))
    images = browser.find_elements(By.CSS_SELECTOR, "#report img")
    wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images))
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#report .links a")]
    assert "report.html" in links


def test_the_studies_and_monitoring_tabs(browser, ui):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(ui.url + "/")
    wait = WebDriverWait(browser, 30)
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=studies]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#studies tr.run"))
    assert [r.get_attribute("data-run") for r in browser.find_elements(By.CSS_SELECTOR, "#studies tr.run")] == [
        "study/trial-0000"
    ]
    assert browser.find_element(By.CSS_SELECTOR, "#studies img").get_attribute("alt") == "study/history.png"
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=monitoring]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#monitoring tbody tr"))
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#monitoring tbody tr")]
    assert len(rows) == 2 and "drift" in rows[1] and "brightness" in rows[1]  # the shifted second window
    assert "pets: 450 images logged, 2 windows of 200" in browser.find_element(By.ID, "monitoring").text


def test_with_an_api_key_the_page_asks_for_it_once(browser, ui_runs: Path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    keyed = UiServer(ui_runs, api_key="s3cret")
    try:
        browser.get(keyed.url + "/#run=shapes")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
        assert not browser.find_elements(By.CSS_SELECTOR, "tr.run")  # nothing shown without the key
        browser.find_element(By.ID, "key").send_keys("wrong\n")
        wait.until(lambda d: d.find_element(By.ID, "error").text == "wrong API key")
        key = browser.find_element(By.ID, "key")
        key.clear()
        key.send_keys("s3cret\n")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#report img"))  # images come with the cookie
        image = browser.find_element(By.CSS_SELECTOR, "#report img")
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0)
        wait.until(lambda d: d.find_element(By.ID, "curves").get_attribute("data-points") == "4")  # the stream too
        assert not browser.find_element(By.ID, "login").is_displayed()
    finally:
        browser.delete_all_cookies()
        keyed.stop()
