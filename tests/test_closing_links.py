"""The addresses the closing lines print, opened in a real headless Chromium against a real TensorBoard:
the Backprop tab at the step the ReLU unit died, and the Time Series on the loss, weights and gradients
with smoothing off."""

from __future__ import annotations

import pytest
from test_browser import CHROMIUM, attr, browser, open_tab  # noqa: F401 (browser: the fixture)
from test_tensorboard_plugin import tensorboard_server

from conftest import run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on this machine (CI installs Debian's chromium)"),
]


@pytest.fixture(scope="module")
def relu_run(tmp_path_factory):
    """A ReLU run from the command line, its closing lines and TensorBoard's address on its logdir."""
    where = tmp_path_factory.mktemp("closing_links")
    proc = run_cli("model=relu", "trainer.max_steps=20", f"hydra.run.dir={where / 'logs' / 'relu_run'}", cwd=where)
    assert proc.returncode == 0, proc.stderr
    # the run's last step: 20 updates, then the final forward pass
    with tensorboard_server(where / "logs", runs={"relu_run": 20}) as url:
        yield proc.stdout.splitlines(), url + "/"


def printed(lines: list[str], start: str, url: str) -> str:
    (line,) = [line for line in lines if line.startswith(start)]
    return line.split(": ", 1)[1].replace("http://localhost:6006/", url)


def test_the_backprop_tab_address_opens_the_step_the_unit_died(relu_run, browser):  # noqa: F811
    lines, url = relu_run
    wait = open_tab(browser, printed(lines, "then the Backprop tab at step 4", url))
    wait.until(lambda d: attr(d, "#step-label", "data-step") == "4")
    assert attr(browser, "#view svg", "class") == "phase-backward"
    assert float(attr(browser, '[data-param="w1"]', "data-value")) == pytest.approx(-0.03812, abs=1e-5)


def test_the_time_series_address_opens_the_posts_tags_unsmoothed(relu_run, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lines, url = relu_run
    browser.switch_to.default_content()
    browser.get("about:blank")
    browser.get(printed(lines, "and the loss, weights and gradients unsmoothed", url))
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "Pinned" in d.find_element(By.TAG_NAME, "body").text)

    def pinned(d):
        section = d.find_element(By.XPATH, "//*[normalize-space(text())='Pinned']/ancestor::*[.//card-view][1]")
        return [
            " ".join(c.text.split("\n")[0:2]).replace(" /", "/").replace("\n", "")
            for c in section.find_elements(By.CSS_SELECTOR, "card-view")
        ]

    titles = wait.until(lambda d: pinned(d) if len(pinned(d)) == 5 else None)
    assert [t.split()[0] for t in titles] == ["train/loss", "params/w1", "grads/w1", "params/w2", "grads/w2"]
    numbers = [e.get_attribute("value") for e in browser.find_elements(By.CSS_SELECTOR, "input[type=number]")]
    assert "0" in numbers  # the smoothing setting, from the address
