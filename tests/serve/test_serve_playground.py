"""The playground page in a real headless Chromium (Debian's chromium + chromium-driver, which
`make test` installs): choose an image, see five bars with the model's answer on top."""

from __future__ import annotations

import os
import shutil

import pytest

import modelcycle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and DRIVER):
        message = "Debian's chromium and chromium-driver are not installed (make test installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the browser test, never skip it
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=900,900"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_choosing_an_image_shows_the_top5_bars(browser, server, trained, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    image = images[-1]
    expected = modelcycle.predict(trained, [image], topk=5)[0]
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))  # models listed from /v1/models
    assert "shapes" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#results .row")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .row")
    labels = [row.find_element(By.CLASS_NAME, "label").text for row in rows]
    assert labels == [t["label"] for t in expected["topk"]]  # 3 classes: all three, in order
    widths = [row.find_element(By.CLASS_NAME, "bar").get_attribute("style") for row in rows]
    assert f"{100 * expected['probability']:.1f}%" in widths[0]
    assert browser.find_element(By.ID, "error").text == ""
    browser.save_screenshot(str(tmp_path / "playground.png"))
    assert (tmp_path / "playground.png").stat().st_size > 1000


def test_the_page_shows_the_servers_error(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "file").send_keys(str(broken))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text.startswith("400")
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .row")


DROP_FILE = """
const [b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, {type: "image/png"}));
const zone = document.getElementById("drop");
zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true, cancelable: true}));
const highlighted = zone.classList.contains("over");
zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
return highlighted;
"""


def test_dropping_an_image_on_the_page_shows_the_top5_bars(browser, server, trained, images):
    """Drag and drop goes through the page's own dragover/drop handlers with a real File in a
    DataTransfer (WebDriver cannot drag a file from the desktop, so the events are dispatched)."""
    import base64

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = images[0]
    expected = modelcycle.predict(trained, [image], topk=5)[0]
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    highlighted = browser.execute_script(DROP_FILE, base64.b64encode(image.read_bytes()).decode(), image.name)
    assert highlighted  # the drop zone showed it would take the file
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .row"))
    labels = [
        row.find_element(By.CLASS_NAME, "label").text for row in browser.find_elements(By.CSS_SELECTOR, "#results .row")
    ]
    assert labels == [t["label"] for t in expected["topk"]]
    assert "over" not in browser.find_element(By.ID, "drop").get_attribute("class")
