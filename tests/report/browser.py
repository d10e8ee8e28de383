"""Open cnnlab's pages in a headless Chromium through Playwright, for the report tests.

The browser is the system's Chromium (``$CNNLAB_CHROMIUM``, else ``chromium``,
``chromium-browser`` or ``google-chrome`` on PATH: Debian's ``chromium`` package, which .ci/run
installs); Playwright never downloads one here. :func:`launch` gives the browser or the reason
there is none, which the tests turn into a skip. :func:`open_page` loads one page at one width and
records what the browser saw: console messages of type error, uncaught page errors, failed loads,
requests that are neither the page's own ``file:`` URL nor ``data:`` URLs, images that did not
decode, the document's width, and a screenshot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, Error, Page, Playwright

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
DESKTOP, PHONE = 1280, 390  # CSS px: a laptop window and a phone held upright
HEIGHT = 900  # CSS px of the viewport; screenshots take the whole page
LOAD_TIMEOUT_MS = 60_000  # generous: 2 shared cores, pages of several MB of inline PNGs and plotly


def find_chromium() -> str | None:
    """The Chromium executable to drive, or None when there is none."""
    env = os.environ.get("CNNLAB_CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


def launch(pw: Playwright) -> Browser | str:
    """The headless system Chromium, or a sentence saying why none could start."""
    exe = find_chromium()
    if exe is None:
        return ("no Chromium executable: install Debian's `chromium` or set CNNLAB_CHROMIUM to one "
                "(Playwright's own browser download is not used)")
    try:
        # --no-sandbox: containers and CI users have no user namespaces for Chromium's sandbox.
        return pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
    except Error as e:
        return f"{exe} did not start under Playwright: {str(e).splitlines()[0]}"


@dataclass
class PageCheck:
    """What one page showed at one width."""

    url: str
    width: int  # CSS px of the viewport
    errors: list[str] = field(default_factory=list)  # console errors, page errors, failed loads
    network: list[str] = field(default_factory=list)  # requested URLs other than the page itself and data:
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages (none should open)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)  # alt (else src head) of <img>s with naturalWidth 0
    scroll_width: int = 0  # document.documentElement.scrollWidth: wider than `width` = sideways page scroll
    client_width: int = 0  # the layout viewport's width (the page's meta viewport at work on a phone)
    text: str = ""  # document.body.innerText
    screenshot: bytes = b""  # PNG of the whole page


@contextmanager
def open_page(browser: Browser, path: str | Path, width: int) -> Iterator[tuple[PageCheck, Page]]:
    """Load the page at ``path`` in a fresh browser context ``width`` CSS px wide (below 700 px a
    phone: touch, and the page's meta viewport applies) and check it; yields the check and the
    loaded page for further checks, and closes the context afterwards. Requests other than the page
    itself and data: URLs are recorded and aborted, so nothing leaves the machine."""
    url = Path(path).resolve().as_uri()
    check = PageCheck(url=url, width=width)
    phone = width < 700
    context = browser.new_context(viewport={"width": width, "height": HEIGHT}, device_scale_factor=1,
                                  is_mobile=phone, has_touch=phone)
    # Anything that makes alert() run (an unescaped class name, say) marks the page.
    context.add_init_script("window.alert = (m) => { window.__pwned = String(m); };")

    def own(u: str) -> bool:
        return u == url or u.startswith("data:")

    try:
        page = context.new_page()
        page.set_default_timeout(LOAD_TIMEOUT_MS)
        page.on("request", lambda r: None if own(r.url) else check.network.append(r.url))
        page.route("**/*", lambda r: r.continue_() if own(r.request.url) else r.abort())
        page.on("console", lambda m: check.errors.append(f"console.error: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: check.errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: None if not own(r.url)  # the others are in check.network already
                else check.errors.append(f"failed to load {r.url[:120]}: {r.failure}"))
        page.on("dialog", lambda d: (check.dialogs.append(d.message), d.dismiss()))
        page.goto(url, wait_until="load")
        # Images decode asynchronously: wait for each (a broken one rejects, and is counted below).
        page.evaluate("Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
        check.images = page.evaluate("document.images.length")
        check.broken_images = page.evaluate(
            "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.alt || (i.getAttribute('src') || '').slice(0, 60))")
        check.scroll_width = page.evaluate("document.documentElement.scrollWidth")
        check.client_width = page.evaluate("document.documentElement.clientWidth")
        check.text = page.evaluate("document.body ? document.body.innerText : ''")
        check.screenshot = page.screenshot(full_page=True, type="png")
        yield check, page
    finally:
        context.close()
