"""A small headless-Chromium client over the Chrome DevTools Protocol, for the report tests.

``Browser()`` starts ``chromium --headless --no-sandbox --disable-gpu --remote-debugging-port=0``
with a fresh user-data dir, reads the port Chromium chose from ``<user-data-dir>/DevToolsActivePort``
and talks to one page target over a websocket (websocket-client). ``open(url)`` loads a page and
returns a :class:`PageCheck`: console errors (``Runtime.consoleAPICalled`` of type error,
``Runtime.exceptionThrown``, ``Log.entryAdded`` of level error), the number of images, whether
every image decoded (``complete && naturalWidth > 0``), requests that left ``file:``/``data:``, and
a full-page screenshot (``Page.captureScreenshot`` with ``captureBeyondViewport``). The browser is
always killed and its folder removed (``close()`` or the ``with`` block).

``find_browser()`` gives the executable (``$CNNLAB_BROWSER``, then chromium / chrome on PATH) or
None; ``Browser()`` raises :class:`BrowserUnavailable` with the reason when none can start, which
the tests turn into a skip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
START_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 60.0


class BrowserUnavailable(RuntimeError):
    """No headless browser could be started here (the reason is the message)."""


def find_browser() -> str | None:
    env = os.environ.get("CNNLAB_BROWSER")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What a loaded page showed."""

    url: str
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    images: int = 0
    images_ok: bool = False  # every <img> complete with naturalWidth > 0
    broken_images: list[str] = field(default_factory=list)  # alt text of the images that did not decode
    network: list[str] = field(default_factory=list)  # requested URLs that are neither file: nor data:
    screenshot: bytes = b""  # PNG
    text: str = ""  # document.body.innerText
    scroll_width: int = 0  # document width at the viewport width used (horizontal overflow check)
    viewport_width: int = 0


class Browser:
    """One headless Chromium process and one page, driven over the DevTools protocol."""

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 900):
        import websocket  # websocket-client (a dev extra)

        exe = executable or find_browser()
        if exe is None:
            raise BrowserUnavailable("no chromium/chrome executable on PATH (install Debian's `chromium` or set "
                                     "CNNLAB_BROWSER)")
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="cnnlab-chromium-")
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self._id = 0
        self.events: list[dict[str, Any]] = []
        try:
            self.proc = subprocess.Popen(
                [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                 f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
                 "--disable-extensions", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                 f"--window-size={width},{height}", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            port = self._wait_port()
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next((t for t in targets if t.get("type") == "page"), None)
            if page is None:
                page = json.loads(urllib.request.urlopen(
                    urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT"),
                    timeout=10).read())
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=LOAD_TIMEOUT_S,
                                                  suppress_origin=True)
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
        except BrowserUnavailable:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise BrowserUnavailable(f"{exe} did not start or answer over DevTools: {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------------------ plumbing
    def _wait_port(self) -> int:
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")[-500:] if self.proc.stderr else ""
                raise BrowserUnavailable(f"the browser exited with status {self.proc.returncode}: {err.strip()}")
            if port_file.exists():
                lines = port_file.read_text().split("\n")
                if lines and lines[0].strip().isdigit():
                    return int(lines[0])
            time.sleep(0.05)
        raise BrowserUnavailable(f"the browser wrote no DevToolsActivePort within {START_TIMEOUT_S:.0f} s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        self._id += 1
        mid = self._id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def _pump_until(self, event: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if any(e["method"] == event for e in self.events):
            return True
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                msg = json.loads(self.ws.recv())
            except Exception:
                break
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == event:
                    self.ws.settimeout(LOAD_TIMEOUT_S)
                    return True
        self.ws.settimeout(LOAD_TIMEOUT_S)
        return False

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate {expression!r}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    # ------------------------------------------------------------------------------- checks
    def open(self, path_or_url: str | Path, width: int | None = None, screenshot: bool = True) -> PageCheck:
        """Load a page (a file path or URL) at ``width`` CSS pixels and check it."""
        url = path_or_url if isinstance(path_or_url, str) and "://" in path_or_url else Path(path_or_url).resolve().as_uri()
        w = width or self.width
        self.call("Emulation.setDeviceMetricsOverride", width=w, height=self.height, deviceScaleFactor=1,
                  mobile=w < 700)
        self.events.clear()
        self.call("Page.navigate", url=url)
        if not self._pump_until("Page.loadEventFired", LOAD_TIMEOUT_S):
            raise RuntimeError(f"{url} did not finish loading within {LOAD_TIMEOUT_S:.0f} s")
        # Images decode asynchronously: wait until every one is complete (or give up after 10 s).
        self.evaluate("Promise.race([Promise.all([...document.images].map(i => i.decode().catch(() => null))),"
                      " new Promise(r => setTimeout(r, 10000))])")
        self._pump_until("__drain__", 0.2)  # collect console events that trail the load
        check = PageCheck(url=url, viewport_width=w)
        check.images = int(self.evaluate("document.images.length"))
        check.images_ok = bool(self.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        check.broken_images = list(self.evaluate(
            "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)") or [])
        check.text = str(self.evaluate("document.body ? document.body.innerText : ''"))
        check.scroll_width = int(self.evaluate("document.documentElement.scrollWidth"))
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") == "error":
                check.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                                 for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                check.errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                en = p["entry"]
                check.errors.append(f"log: {en.get('text')} {en.get('url', '')}".strip())
            elif m == "Network.requestWillBeSent":
                u = p.get("request", {}).get("url", "")
                if not u.startswith(("file:", "data:", "about:")):
                    check.network.append(u)
        if screenshot:
            shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            check.screenshot = base64.b64decode(shot["data"])
        return check

    # ------------------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Kill the browser (its whole process group) and remove its profile folder."""
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only its own children
                    self.proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                        self.proc.wait(timeout=10)
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        pass
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
