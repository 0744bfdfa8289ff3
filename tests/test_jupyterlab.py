"""JupyterLab as users start it (`make lab`): REST API, a kernel that imports the package,
and notebook 01 rendered by a headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = uuid.uuid4().hex
NOTEBOOKS = ["01_data_exploration.ipynb", "02_train_ae1.ipynb", "03_train_ae2.ipynb",
             "04_threshold_selection.ipynb", "05_results_gallery.ipynb"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, method: str = "GET", body: dict | None = None) -> dict | list:
    request = urllib.request.Request(
        f"{base}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`jupyter lab` headless on a free loopback port, opened on notebooks/."""
    port = free_port()
    home = tmp_path_factory.mktemp("jupyter-home")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    jupyter = Path(sys.executable).parent / "jupyter"
    process = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={ROOT / 'notebooks'}",
         "--ServerApp.allow_root=True"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            api(base, "/api/status")
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"jupyter lab did not start: {process.stderr.read()[-2000:]!r}")
            time.sleep(0.5)
    yield base
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_lab_lists_the_five_notebooks(lab: str):
    listing = api(lab, "/api/contents/")
    names = {item["name"] for item in listing["content"]}
    assert set(NOTEBOOKS) <= names


def test_kernel_imports_anomaly_utils(lab: str):
    import websocket

    kernel = api(lab, "/api/kernels", "POST", {"name": "python3"})
    ws_url = lab.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels?token={TOKEN}"
    ws = websocket.create_connection(ws_url, timeout=120)
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": "import anomaly_utils, anomaly_utils.data\n"
                            "print('version', anomaly_utils.__version__)",
                    "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False}}))
    # The reply comes on the shell channel, the printed text on iopub; the two are not
    # ordered, so read until both the reply and iopub's "idle" for this request have come.
    printed, status, idle = "", None, False
    deadline = time.monotonic() + 120
    while (status is None or not idle) and time.monotonic() < deadline:
        message = json.loads(ws.recv())
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "stream":
            printed += message["content"]["text"]
        elif message["msg_type"] == "execute_reply":
            status = message["content"]["status"]
        elif message["msg_type"] == "status":
            idle = message["content"]["execution_state"] == "idle"
    ws.close()
    api(lab, f"/api/kernels/{kernel['id']}", "DELETE")
    assert status == "ok", printed
    import anomaly_utils

    assert f"version {anomaly_utils.__version__}" in printed


def chromium_binary() -> str | None:
    """Debian's chromium, installed with apt when missing and possible (as the test setup)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode != 0:
            return None
    return shutil.which("chromium")


@pytest.mark.browser
def test_chromium_renders_notebook_01(lab: str, tmp_path: Path):
    browser = chromium_binary()
    if browser is None:
        pytest.skip("Debian's chromium is not installed and could not be installed with apt "
                    "(not root, no apt-get, or no package registry)")
    url = f"{lab}/lab/tree/01_data_exploration.ipynb?token={TOKEN}"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1400,1000", "--virtual-time-budget=30000"]
    screenshot = tmp_path / "lab.png"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=180).stdout
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True,
                   timeout=180)
    runs = ROOT / "runs"
    runs.mkdir(exist_ok=True)
    if screenshot.is_file():
        shutil.copy(screenshot, runs / "jupyterlab_notebook01.png")
    assert "jp-Notebook" in dom, "JupyterLab did not render a notebook panel"
    assert "01 · Data exploration" in dom, "the notebook's title cell was not rendered"
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
