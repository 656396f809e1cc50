"""The plans notebook in a real browser: JupyterLab on 127.0.0.1 and Debian's Chromium driven by
playwright at 1440x900. Runs every cell, then checks that no cell failed, that the plan pictures
are drawn and fit the notebook's width, that the explorer's slider moves the highlighted RJP step,
and that the backward plan stays in view. Screenshots go to SCREENSHOTS (printed)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "plans.ipynb"
SCREENSHOTS = Path(tempfile.gettempdir()) / "workbench-browser-screenshots"
VIEWPORT = {"width": 1440, "height": 900}
SETUP = "run `bash .ci/setup`, which installs Debian's chromium and the dev extra (playwright)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, limit: float = 60) -> None:
    """Poll ``url`` until JupyterLab answers; fail with its log if it exits or never answers."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer on {url}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab on 127.0.0.1, a free port and a random token, serving a copy of the notebook
    (running it never writes outputs into the repository); stopped by its process id."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = _free_port(), os.urandom(16).hex()
    notices = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    notices.mkdir(parents=True)  # no question about fetching Jupyter news over the screenshots
    (notices / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_PLATFORM_DIRS": "1"}
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI runs as root
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc, log)
        yield {"url": f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}",
               "root": root, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _executed(path: Path) -> dict | None:
    """The saved notebook once every code cell has run, else None."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    return nb if cells and all(c.get("execution_count") for c in cells) else None


def _boxes(page, selector: str) -> list[dict]:
    """Title and bounding box (viewport coordinates) of every SVG node matched by ``selector``."""
    return page.eval_on_selector_all(selector, """els => els.map(e => {
        const r = e.getBoundingClientRect();
        return {title: e.querySelector('title').textContent, left: r.left, top: r.top,
                right: r.right, bottom: r.bottom};
    })""")


def test_plans_notebook_in_chromium(jupyterlab):
    chromium = shutil.which("chromium")
    assert chromium, f"Debian's chromium is not installed: {SETUP}"
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:  # a missing dev dependency is a failure, not a skip
        pytest.fail(f"the playwright package is missing ({exc}): {SETUP}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {SCREENSHOTS}")
    saved = jupyterlab["root"] / NOTEBOOK.name
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)
            page.goto(jupyterlab["url"])
            page.locator(".jp-Notebook .jp-Cell").first.wait_for()
            kernel = page.locator(".jp-StatusBar-TextItem[title^='Change kernel']")
            expect(kernel).to_have_text(re.compile(r"\| Idle$"))  # the kernel has started
            page.locator(".jp-Notebook .jp-Cell").first.click()
            page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
            for _ in range(300):  # until every code cell shows its execution count
                page.wait_for_timeout(500)
                if all(re.fullmatch(r"\[\d+\]:", t) for t in prompts.all_text_contents()):
                    break
            expect(kernel).to_have_text(re.compile(r"\| Idle$"))
            page.keyboard.press("Control+s")  # the saved copy holds every output, errors included
            nb = None
            for _ in range(60):
                page.wait_for_timeout(500)
                nb = _executed(saved)
                if nb is not None:
                    break
            assert nb is not None, f"not every cell ran: {prompts.all_text_contents()}"
            page.screenshot(path=str(SCREENSHOTS / "1-notebook-top.png"))

            # no cell failed
            errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
            assert errors == [], "\n".join(f"{o['ename']}: {o['evalue']}" for o in errors)
            assert page.locator(".jp-OutputArea-output", has_text="Traceback").count() == 0

            # the plan pictures are drawn, each scaled to fit the notebook's width
            plans = page.locator(".jp-OutputArea-output .wb-plan")
            assert plans.count() >= 5  # forward, backward, both, EXPLAIN ANALYZE, the explorer
            for i in range(plans.count()):
                view = plans.nth(i)
                view.scroll_into_view_if_needed()
                svg = view.locator("svg.wb-plan-svg")
                box, area = svg.bounding_box(), view.bounding_box()
                assert svg.locator("g.node").count() > 3
                assert box and box["width"] > 100 and box["height"] > 50, box
                assert box["width"] <= area["width"] + 1, (i, box, area)
            wide = plans.nth(3)  # the EXPLAIN ANALYZE of the GCN: wider than the notebook unscaled
            wide.scroll_into_view_if_needed()
            natural = float(wide.locator("svg").get_attribute("width").removesuffix("pt")) * 4 / 3
            assert natural > wide.bounding_box()["width"] >= wide.locator("svg").bounding_box()["width"]
            wide.screenshot(path=str(SCREENSHOTS / "2-explain-analyze-fitted.png"))
            wide.locator("button[title='zoom in']").click()
            assert wide.locator("svg").bounding_box()["width"] > wide.bounding_box()["width"] * 0.99

            # the explorer: the slider moves the highlighted step
            explorer = page.locator(".wb-explorer")
            slider = explorer.locator(".widget-slider")
            slider.evaluate("e => e.scrollIntoView({block: 'start'})")
            highlighted = explorer.locator("g.node.highlight title")
            expect(highlighted).to_have_count(1)
            before = highlighted.text_content()
            page.screenshot(path=str(SCREENSHOTS / "3-explorer-step-1.png"))
            explorer.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            expect(explorer.locator(".widget-html", has_text="Step 2 of")).to_have_count(1)
            expect(highlighted).not_to_have_text(before)
            assert explorer.locator("g.node.current").count() >= 1
            details = explorer.locator(".widget-html", has_text="its VJP").inner_text()
            assert "\x1b[" not in details and "[39m" not in details  # jaxprs without terminal colours
            assert re.search(r"^kernel (.+)$", details, re.M).group(1).strip() not in ("", "lambda")
            page.keyboard.press("End")
            caption = explorer.locator(".widget-html", has_text=re.compile(r"Step (\d+) of \1:"))
            expect(caption).to_have_count(1)

            # the whole backward plan lies inside the 1440x900 viewport
            slider.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(300)
            nodes = _boxes(page, ".wb-explorer svg g.node")
            backward = [b for b in nodes if re.fullmatch(r"B\d+|F\d+_B\d+", b["title"])]
            assert len(backward) > 20, [b["title"] for b in nodes]
            outside = [b for b in backward if b["left"] < 0 or b["top"] < 0
                       or b["right"] > VIEWPORT["width"] or b["bottom"] > VIEWPORT["height"]]
            page.screenshot(path=str(SCREENSHOTS / "4-explorer-last-step.png"))
            assert outside == [], outside
        finally:
            browser.close()
