"""The Backprop tab in a real headless Chromium (Debian's, through its chromedriver) against a real TensorBoard.

Opens TensorBoard at #backprop, switches into the plugin's iframe, picks the post's ReLU run from the
list, moves the step slider to step 4 with the keyboard and reads the dead edge and the values from the
page; checks the post's figures and their marks at step 0 of the sigmoid run, the phase switch, the
run filter and a deep link (#backprop&run=…&step=…); "—" and never nan at the final forward pass; the
sweep's runs in η's numeric order; the address written back and opened again; the loss and weight chart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_backprop_view import approx
from test_tensorboard_plugin import RUNS, SWEEP, SWEEP_BY_LR, tensorboard_server, train_runs

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
    assert f"{len(RUNS)} of {len(RUNS)} runs" in browser.find_element(By.ID, "run-count").text
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
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "button[data-run]")) == 3)
    assert [b.get_attribute("data-run") for b in browser.find_elements(By.CSS_SELECTOR, "button[data-run]")] == [
        f"{SWEEP}/model=linear,optim.lr=0.03",
        f"{SWEEP}/model=linear,optim.lr=0.1",
        f"{SWEEP}/model=linear,optim.lr=0.3",
    ]
    assert f"3 of {len(RUNS)} runs" in browser.find_element(By.ID, "run-count").text
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


def test_the_final_pass_shows_a_dash_and_never_nan(server, browser):
    from selenium.webdriver.common.by import By

    wait = open_tab(browser, server + "/#backprop&run=post_sigmoid&step=1")
    wait.until(lambda d: attr(d, "#step-label", "data-step") == "1")
    view = browser.find_element(By.ID, "view")
    assert "nan" not in view.text.lower()
    assert "no backward at the final pass" in browser.find_element(By.ID, "step-label").text
    assert attr(browser, "[data-note]", "data-note") == "no backward at the final pass"
    # the forward values are there (L after the post's one update); gradients and updates are "—"
    assert float(attr(browser, '[data-node="L"]', "data-value")) == approx(1.0501050768)
    w1 = browser.find_element(By.CSS_SELECTOR, '[data-param="w1"]')
    assert (w1.get_attribute("data-grad"), w1.get_attribute("data-new")) == ("", "")
    assert "∂L/∂w1 = —" in w1.text and "no update: no backward at the final pass" in w1.text
    assert attr(browser, '[data-edge="act"]', "data-local") == ""
    chain = browser.find_element(By.CSS_SELECTOR, '[data-chain="dL_dw1"]').text
    assert chain == "the chain rule: ∂L/∂w1 = ∂L/∂ŷ · w2 · σ′(z1) · x = — (no backward at the final pass)"
    # the MLP's last step: ‖∂L/∂W‖ is "—"
    open_tab(browser, server + "/#backprop&run=mlp&step=20")
    fc1 = browser.find_element(By.CSS_SELECTOR, 'g.layer[data-layer="fc1"]')
    assert fc1.get_attribute("data-grad-norm") == "" and float(fc1.get_attribute("data-weight-norm")) > 0
    assert "—" in fc1.text and "nan" not in fc1.text.lower()
    assert "nan" not in browser.find_element(By.ID, "view").text.lower()


def test_the_sweep_is_listed_in_numeric_order(server, browser):
    from selenium.webdriver.common.by import By

    open_tab(browser, server + "/#backprop")
    group = browser.find_element(By.CSS_SELECTOR, f'details[data-group="{SWEEP}"]')
    listed = [b.get_attribute("data-run") for b in group.find_elements(By.CSS_SELECTOR, "button[data-run]")]
    assert listed == SWEEP_BY_LR  # 0.03, 0.1, 0.3, 3, 10, not 0.03, 0.1, 0.3, 10, 3


def test_the_address_follows_the_run_step_and_phase_and_opens_it_again(server, browser):
    from urllib.parse import unquote

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    wait = open_tab(browser, server + "/#backprop")
    run = f"{SWEEP}/model=linear,optim.lr=0.1"
    browser.find_element(By.CSS_SELECTOR, f'button[data-run="{run}"]').click()
    wait.until(lambda d: attr(d, "#step-slider", "max") == "30")
    slider = browser.find_element(By.ID, "step-slider")
    slider.click()
    slider.send_keys(Keys.HOME, *[Keys.ARROW_RIGHT] * 7)
    wait.until(lambda d: attr(d, "#step-label", "data-step") == "7")
    browser.find_element(By.CSS_SELECTOR, 'input[name="phase"][value="update"]').click()
    w = float(attr(browser, '[data-param="w"]', "data-value"))
    browser.switch_to.default_content()
    url = browser.current_url
    hash_ = unquote(url.split("#", 1)[1])
    assert hash_.split("&")[0] == "backprop"
    assert f"p.backprop.run={run}" in hash_ and "p.backprop.step=7" in hash_ and "p.backprop.phase=update" in hash_
    # the same address in a fresh page opens the same run, step and phase
    wait = open_tab(browser, url)
    wait.until(lambda d: attr(d, "#step-label", "data-step") == "7")
    assert browser.find_element(By.ID, "run-title").text == run
    assert attr(browser, "#view svg", "class") == "phase-update"
    assert float(attr(browser, '[data-param="w"]', "data-value")) == w
    # ŷ = w·x with x = 2, y = 10, η = 0.1: w − 5 shrinks by (1 − 2ηx²) = 0.2 each step, w = 5 − 2·0.2^7
    assert w == approx(5 - 2 * 0.2**7)


def test_the_chart_draws_the_loss_and_weights_with_the_step_marked(server, browser):
    from selenium.webdriver.common.by import By

    wait = open_tab(browser, server + "/#backprop&run=post_relu&step=4")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#chart [data-series="w1"] line.current'))
    panels = browser.find_elements(By.CSS_SELECTOR, "#chart g[data-series]")
    assert [p.get_attribute("data-series") for p in panels] == ["loss", "w1", "w2"]
    assert all(p.get_attribute("data-points") == "201" for p in panels)
    for panel in panels:
        (line,) = panel.find_elements(By.CSS_SELECTOR, "polyline")
        assert len(line.get_attribute("points").split()) == 201
        assert panel.find_element(By.CSS_SELECTOR, "line.current").get_attribute("data-step") == "4"
    dots = {p.get_attribute("data-series"): p.find_element(By.CSS_SELECTOR, "circle.current-dot") for p in panels}
    # step 4 of the post's ReLU net: the unit has just died, L = (0.5 − 0)² = 0.25, w1 = −0.0381204359
    assert float(dots["loss"].get_attribute("data-value")) == approx(0.25)
    assert float(dots["w1"].get_attribute("data-value")) == approx(-0.0381204359)
    # the marker moves with the slider
    browser.find_element(By.ID, "play").click()
    wait.until(lambda d: int(attr(d, '#chart [data-series="loss"] line.current', "data-step")) > 4)
    browser.find_element(By.ID, "play").click()


def test_a_saturated_sigmoid_unit(server, browser):
    from selenium.webdriver.common.by import By

    wait = open_tab(browser, server + "/#backprop&run=post_sigmoid_lr100&step=2")
    wait.until(lambda d: attr(d, "#step-label", "data-step") == "2")
    act = browser.find_element(By.CSS_SELECTOR, '[data-edge="act"]')
    assert (act.get_attribute("data-saturated"), act.get_attribute("data-saturated-since")) == ("true", "1")
    assert "saturated since step 1" in act.text
    assert (
        browser.find_element(By.CSS_SELECTOR, '#diagnoses li[data-kind="saturation"]').get_attribute("data-step") == "1"
    )
