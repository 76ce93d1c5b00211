"""The chapters open in Jupyter: a headless server lists them, runs the package in a kernel and stops cleanly.

`jupyter lab` starts on a free port with a random token and the repository as its root. Over the REST
API we list notebooks/ (all eight chapters), start a kernel, run one cell over the kernel's websocket
(the Jupyter messaging protocol, as JupyterLab itself does) that imports `gpt` and `lora` and prints
token ids and a LoRA parameter count we know, delete the kernel and shut the server down: it must exit 0.

With a real browser available (Debian's `chromium`; `.ci/run` installs it when it runs as root) the
second test opens chapter 1 in JupyterLab, waits until its first heading is rendered and takes a
screenshot. Playwright drives the system's chromium (never `playwright install`, which downloads a browser).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts JupyterLab and runs a kernel

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT = 180  # seconds; a busy 2-core machine needs about 10 to start JupyterLab


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp_path: Path):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
                   JUPYTER_DATA_DIR=str(Path(sys.prefix) / "share" / "jupyter"), LORA_DEVICE="cpu", OMP_NUM_THREADS="1")
        self.log = open(tmp_path / "server.log", "w")
        # Checkpoints go to tmp_path: opening a notebook must leave no .ipynb_checkpoints/ in the repository.
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", f"--port={self.port}",
             "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={self.token}",
             f"--ServerApp.root_dir={ROOT}", f"--FileCheckpoints.checkpoint_dir={tmp_path / 'checkpoints'}"]
            + (["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process.poll() is None, f"jupyter lab exited with {self.process.returncode}: {self.log_text()}"
            try:
                self.api("GET", "/api/status")
                return
            except OSError:
                assert time.monotonic() < deadline, f"jupyter lab did not answer in {START_TIMEOUT} s: {self.log_text()}"
                time.sleep(0.5)

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def api(self, method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            return response.status, (json.loads(text) if text else None)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def server(tmp_path):
    started = Server(tmp_path)
    yield started
    started.stop()


def run_in_kernel(server: Server, kernel_id: str, code: str, timeout: float = 120) -> str:
    """Execute `code` over the kernel's websocket; returns its printed output. Fails on an error reply."""
    import websocket  # websocket-client, installed with jupyter-server

    ws = websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?token={server.token}", timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        printed, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                printed.append(msg["content"]["text"])
            elif kind == "error":
                pytest.fail(f"the cell failed in the kernel: {msg['content']['ename']}: {msg['content']['evalue']}")
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(printed)
        pytest.fail(f"no answer from the kernel within {timeout} s")
    finally:
        ws.close()


def test_server_lists_chapters_runs_the_package_in_a_kernel_and_stops(server):
    status, listing = server.api("GET", "/api/contents/notebooks")
    assert status == 200
    assert CHAPTERS and set(CHAPTERS) <= {item["name"] for item in listing["content"]}  # tests/test_notebooks.py counts them

    status, kernel = server.api("POST", "/api/kernels", {"name": "python3"})
    assert status == 201
    printed = run_in_kernel(server, kernel["id"], "import gpt, lora\n"
                                                  "print(gpt.get_tokenizer().encode('Hello, world.'))\n"
                                                  "print(sum(p.numel() for p in lora.LoRALayer(512, 64, 8, 16).parameters()))")
    assert printed.split("\n")[:2] == ["[15496, 11, 995, 13]", "4608"]  # GPT-2's ids; r(d_in + d_out) = 8 * 576

    status, _ = server.api("DELETE", f"/api/kernels/{kernel['id']}")
    assert status == 204
    assert server.api("GET", "/api/kernels")[1] == []

    server.api("POST", "/api/shutdown")
    assert server.process.wait(60) == 0, server.log_text()


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser: {CHROMIUM} is absent (Debian: apt-get install chromium; "
                                                  f".ci/run installs it when run as root)")
def test_lab_renders_chapter_1_in_a_headless_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server.url}/lab/tree/notebooks/01_text_to_tokens.ipynb?token={server.token}")
            heading = page.locator("h1", has_text="Chapter 1: Text to tokens")
            heading.first.wait_for(state="visible", timeout=120_000)
            page.screenshot(path=str(tmp_path / "chapter1.png"))
        finally:
            browser.close()
    assert (tmp_path / "chapter1.png").stat().st_size > 10_000
