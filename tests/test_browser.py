"""The release in a real JupyterLab, driven by headless Chromium as a student uses it: open the
notebook, Run All, and see the data cell's message and a visible check's failure. Screenshots are
saved in test-artifacts/."""
import os
import shutil
import time

import pytest

from browser import ARTIFACTS, headless_chromium, jupyter_lab, needs_chromium
from conftest import DATA_DIR, RELEASE

pytestmark = [pytest.mark.slow, needs_chromium]


NOTEBOOK = """const app = window.jupyterapp;
const panel = app && Array.from(app.shell.widgets('main')).find(w => w.content && w.sessionContext);"""
PENDING = NOTEBOOK + """
if (!panel || !panel.sessionContext.session) return null;
const cells = panel.content.model.cells; let pending = 0, code = 0;
for (let i = 0; i < cells.length; i++) { const c = cells.get(i);
  if (c.type === 'code') { code++; if (c.executionCount === null) pending++; } }
return [code, pending, panel.sessionContext.session.kernel ? panel.sessionContext.session.kernel.status : 'none'];"""


def wait_for(browser, condition, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = browser.execute_script(PENDING)
        if condition(value):
            return value
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}: {value}")


def output_with(browser, text):
    """The output area that shows `text`, scrolled into view."""
    from selenium.webdriver.common.by import By
    found = [e for e in browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output") if text in e.text]
    assert found, f"no output shows {text!r}"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", found[0])
    time.sleep(0.5)
    return found[0]


def test_a_student_runs_the_blank_release_in_jupyterlab(tmp_path):
    shutil.copy(RELEASE, tmp_path / "tutorial3.ipynb")
    env = {k: v for k, v in os.environ.items() if k != "NBGRADER_EXECUTION"}
    env.update(MNIST_DIR=str(DATA_DIR), OMP_NUM_THREADS="1", JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), HOME=str(tmp_path))
    ARTIFACTS.mkdir(exist_ok=True)
    with jupyter_lab(tmp_path, env) as (url, token), headless_chromium(tmp_path / "profile") as browser:
        browser.get(f"{url}/lab/tree/tutorial3.ipynb?token={token}")
        wait_for(browser, lambda v: v is not None and v[2] == "idle", 120, "the notebook and its kernel")
        browser.execute_script(NOTEBOOK + "app.shell.activateById(panel.id);")
        browser.execute_script("return window.jupyterapp.commands.execute('notebook:run-all-cells');")
        code, pending, _ = wait_for(browser, lambda v: v and v[1] == 0 and v[2] == "idle", 600,
                                    "Run All to reach the end")
        assert code > 40 and pending == 0  # every code cell ran: Run All was not stopped by an error

        data_cell = output_with(browser, "MNIST folder: " + str(DATA_DIR))
        data_cell.screenshot(str(ARTIFACTS / "jupyterlab-data-cell.png"))
        failure = output_with(browser, "✗ Task 1 check failed: get_random_batch: two calls returned the same batch")
        failure.screenshot(str(ARTIFACTS / "jupyterlab-check-failed.png"))
        browser.save_screenshot(str(ARTIFACTS / "jupyterlab-window.png"))
        output_with(browser, "This cell still has ??? blanks, so it did not run")
        output_with(browser, "Skipped: MLP_Numpy, cross_entropy_numpy, grad_descent_update_numpy not defined yet")
    for name in ["jupyterlab-data-cell.png", "jupyterlab-check-failed.png", "jupyterlab-window.png"]:
        assert (ARTIFACTS / name).stat().st_size > 1000
