"""The Backprop tab in a real headless Chromium (Debian's, through its chromedriver) against a real TensorBoard.

Opens TensorBoard at #backprop, switches into the plugin's iframe, picks the post's ReLU run from the
list, moves the step slider to step 4 with the keyboard and reads the dead edge and the values from the
page; checks the post's figures and their marks at step 0 of the sigmoid run, the phase switch, the
run filter and a deep link (#backprop&run=…&step=…).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_backprop_view import approx
from test_tensorboard_plugin import SWEEP, tensorboard_server, train_runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on this machine (CI installs Debian's chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("backprop_browser_runs")
    train_runs(logdir)
    with tensorboard_server(logdir) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium comes with the dev extra: pip install -e '.[dev]'"
    )
    from selenium.webdriver.chrome.service import Service

    if not Path(CHROMEDRIVER).exists():
        pytest.fail("chromium is here but chromedriver is not: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    # Service with the driver's path: selenium never looks for (or downloads) a driver or a browser itself
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_tab(driver, url: str):
    """Load ``url`` and switch into the Backprop tab's iframe once its graph is drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.switch_to.default_content()
    driver.get("about:blank")  # a fresh page: a new hash alone would not reload TensorBoard
    driver.get(url)
    wait = WebDriverWait(driver, 30)
    frame = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "iframe"))
    driver.switch_to.frame(frame)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#view [data-node], #view [data-layer]"))
    return wait


def attr(driver, selector: str, name: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector).get_attribute(name)


def test_relu_run_dead_edge_at_step_4(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    wait = open_tab(browser, server + "/#backprop")
    assert "5 of 5 runs" in browser.find_element(By.ID, "run-count").text
    browser.find_element(By.CSS_SELECTOR, 'button[data-run="post_relu"]').click()
    wait.until(lambda d: attr(d, "#step-slider", "max") == "200")
    assert attr(browser, '[data-edge="act"]', "data-dead") == "false"  # step 0: the unit is alive
    slider = browser.find_element(By.ID, "step-slider")
    slider.click()
    slider.send_keys(Keys.HOME, *[Keys.ARROW_RIGHT] * 4)
    wait.until(lambda d: attr(d, "#step-label", "data-step") == "4")
    wait.until(lambda d: attr(d, '[data-node="z1"]', "data-value").startswith("-"))
    act = browser.find_element(By.CSS_SELECTOR, '[data-edge="act"]')
    assert (act.get_attribute("data-dead"), act.get_attribute("data-dead-since")) == ("true", "4")
    assert float(act.get_attribute("data-local")) == 0.0 and float(act.get_attribute("data-grad")) == 0.0
    assert "dead since step 4" in act.text
    assert float(attr(browser, '[data-node="z1"]', "data-value")) == approx(-0.0381204359)
    assert float(attr(browser, '[data-node="h"]', "data-value")) == 0.0
    assert float(attr(browser, '[data-param="w1"]', "data-grad")) == 0.0
    assert float(attr(browser, '[data-param="w1"]', "data-new")) == approx(-0.0381204359)
    assert float(attr(browser, '[data-node="L"]', "data-value")) == approx(0.25)
    dead = browser.find_element(By.CSS_SELECTOR, '#diagnoses li[data-kind="dead_unit"]')
    assert dead.get_attribute("data-step") == "4" and "active" in dead.get_attribute("class")
    # one step back the unit still passes the gradient
    slider.send_keys(Keys.ARROW_LEFT)
    wait.until(lambda d: attr(d, "#step-label", "data-step") == "3")
    assert attr(browser, '[data-edge="act"]', "data-dead") == "false"


def test_sigmoid_step_0_shows_the_posts_figures_and_marks_the_slips(server, browser):
    from selenium.webdriver.common.by import By

    wait = open_tab(browser, server + "/#backprop&run=post_sigmoid&step=0")
    wait.until(lambda d: d.find_element(By.ID, "run-title").text == "post_sigmoid")
    assert float(attr(browser, '[data-node="L"]', "data-value")) == approx(1.2599149502)
    assert float(attr(browser, '[data-param="w2"]', "data-grad")) == approx(-1.3973705692)
    assert float(attr(browser, '[data-param="w1"]', "data-grad")) == approx(0.5275642193)
    marks = {
        e.get_attribute("data-post-for"): e.get_attribute("data-marked")
        for e in browser.find_elements(By.CSS_SELECTOR, "[data-post-for]")
    }
    assert {k for k, m in marks.items() if m == "true"} == {"dL_dw2", "loss_new"}
    assert marks["h"] == "false" and marks["loss"] == "false" and marks["w1_new"] == "false"
    assert "2 of 11" in browser.find_element(By.CSS_SELECTOR, '#post-note [data-post="shown"]').text
    # the phase switch lights one pass at a time
    browser.find_element(By.CSS_SELECTOR, 'input[name="phase"][value="backward"]').click()
    assert attr(browser, "#view svg", "class") == "phase-backward"


def test_the_filter_box_and_a_deep_link_into_a_sweep(server, browser):
    from selenium.webdriver.common.by import By

    wait = open_tab(browser, server + "/#backprop&run=model=linear,optim.lr=0.3&step=128&phase=forward")
    wait.until(lambda d: attr(d, "#step-label", "data-step") == "128")
    assert browser.find_element(By.ID, "run-title").text == f"{SWEEP}/model=linear,optim.lr=0.3"
    assert attr(browser, "#view svg", "class") == "phase-forward"
    diverged = browser.find_element(By.CSS_SELECTOR, '#diagnoses li[data-kind="divergence"]')
    assert diverged.get_attribute("data-step") == "128"
    browser.find_element(By.ID, "run-filter").send_keys("lr=0.")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "button[data-run]")) == 2)
    assert {b.get_attribute("data-run") for b in browser.find_elements(By.CSS_SELECTOR, "button[data-run]")} == {
        f"{SWEEP}/model=linear,optim.lr=0.1",
        f"{SWEEP}/model=linear,optim.lr=0.3",
    }
    assert "2 of 5 runs" in browser.find_element(By.ID, "run-count").text
    # a new deep link in the same page moves the tab along
    browser.execute_script("window.parent.location.hash = '#backprop&run=post_relu&step=150'")
    wait.until(lambda d: attr(d, "#step-label", "data-step") == "150")
    assert browser.find_element(By.ID, "run-title").text == "post_relu"
    assert attr(browser, '[data-edge="act"]', "data-dead-since") == "4"


def test_the_mlp_boxes_and_gradient_bars(server, browser):
    from selenium.webdriver.common.by import By

    open_tab(browser, server + "/#backprop&run=mlp&step=5")
    boxes = browser.find_elements(By.CSS_SELECTOR, "#view g.layer[data-layer]")
    assert [b.get_attribute("data-layer") for b in boxes] == ["fc1", "act1", "fc2", "act2", "fc3", "act3", "out", "L"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#grad-bars rect.bar")
    assert [b.get_attribute("data-layer") for b in bars] == ["fc1", "fc2", "fc3", "out"]
    norms = [float(b.get_attribute("data-grad-norm")) for b in bars]
    heights = [float(b.get_attribute("height")) for b in bars]
    assert all(n > 0 for n in norms)
    # taller bars for larger norms: a log scale keeps the order
    assert sorted(range(4), key=lambda i: norms[i]) == sorted(range(4), key=lambda i: heights[i])
