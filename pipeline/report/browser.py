"""Open the report in headless Chromium, as a person's browser would from the file system: the DOM
after its script ran (with what the page itself recorded: script errors, images that did not load),
the console's errors, and a screenshot. For the tests and for the README's picture."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
         "--allow-file-access-from-files", "--virtual-time-budget=10000"]  # fmt: skip
_CONSOLE = re.compile(r"CONSOLE\(\d+\)\] \"(?P<message>.*?)\"|Uncaught (?P<uncaught>.*)")


def find_chromium() -> str | None:
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


@dataclass(frozen=True)
class BrowserView:
    dom: str  # the page's HTML after its script ran
    script_errors: list[str]  # what the page's error handler recorded
    console_errors: list[str]  # errors Chromium's console printed
    images_total: int
    images_failed: list[str]  # src of each image that did not load

    def text(self) -> str:
        """The DOM's visible text, roughly (tags dropped, entities decoded)."""
        return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", " ", self.dom, flags=re.S)))


def open_page(page: str | Path, *, screenshot: str | Path | None = None, width: int = 1280, height: int = 4000,
              chromium: str | None = None, timeout_s: float = 120) -> BrowserView:  # fmt: skip
    """Load `page` (a local HTML file) in headless Chromium; with `screenshot`, also save a PNG of it."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (chromium, google-chrome) on PATH")
    url = Path(page).absolute().as_uri()
    dumped = subprocess.run([binary, *FLAGS, "--enable-logging=stderr", "--v=0", "--dump-dom", url], capture_output=True,
                            text=True, timeout=timeout_s)  # fmt: skip
    if dumped.returncode != 0 or "<body" not in dumped.stdout:
        raise RuntimeError(f"Chromium could not open {page} (exit {dumped.returncode}): {dumped.stderr[-2000:]}")
    if screenshot is not None:
        shot = subprocess.run([binary, *FLAGS, f"--window-size={width},{height}", f"--screenshot={Path(screenshot).absolute()}", url],
                              capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
        if shot.returncode != 0 or not Path(screenshot).is_file():
            raise RuntimeError(f"Chromium could not take a screenshot of {page}: {shot.stderr[-2000:]}")
    body = re.search(r"<body([^>]*)>", dumped.stdout)
    attributes = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1))) if body else {}
    images = json.loads(html.unescape(attributes.get("images", "null")) or "null") or {"total": 0, "failed": ["(the page's load event never ran)"]}
    console = [m.group("message") or m.group("uncaught") for m in _CONSOLE.finditer(dumped.stderr)]
    return BrowserView(dom=dumped.stdout, script_errors=json.loads(html.unescape(attributes.get("errors", "[]"))),
                       console_errors=[c for c in console if c], images_total=images["total"], images_failed=images["failed"])  # fmt: skip
