"""The release in a real JupyterLab, driven by headless Chromium as a student uses it: open the
notebook, Run All, and see the data cell's message and a visible check's failure. Screenshots are
saved in test-artifacts/."""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import DATA_DIR, RELEASE, REPO

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = REPO / "test-artifacts"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (./setup installs them when run as root: "
           "apt-get install chromium chromium-driver)")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(folder, env):
    """A JupyterLab server on 127.0.0.1 serving `folder`; yields its URL and token."""
    port, token = free_port(), "nncourse-test-token"
    log = open(folder / "jupyter.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         f"--ServerApp.root_dir={folder}", f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start: {(folder / 'jupyter.log').read_text()[-2000:]}")
        yield url, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@contextlib.contextmanager
def headless_chromium(profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


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
