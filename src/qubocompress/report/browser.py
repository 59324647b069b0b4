"""A report as a browser sees it: headless Chromium loads ``report.html`` from disk, counts its
figures that decoded and were drawn, and takes a screenshot (for a README, or to check a report).

Chromium is not a dependency: :func:`find_chromium` says whether one is installed (``make test``
installs Debian's ``chromium`` where it can).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import unescape
from pathlib import Path

from qubocompress.errors import ArtifactError
from qubocompress.io import write_bytes_atomic

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Seconds of (virtual) page time the browser gets to load and run the check, and of wall time per call.
VIRTUAL_TIME_MS = 5000
TIMEOUT_S = 120
# The page that loads the report in an iframe and writes what it found into its own DOM: every
# image's natural size and the standard deviation of its pixels' luminance, drawn on a canvas.
CHECKER = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<iframe id="report" src="{src}" width="1200" height="900"></iframe>
<script>
document.getElementById("report").addEventListener("load", () => {{
  const images = [...document.getElementById("report").contentDocument.images];
  const found = images.map((image) => {{
    const canvas = document.createElement("canvas");
    canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
    let spread = 0;
    if (image.naturalWidth > 0) {{
      const context = canvas.getContext("2d");
      context.drawImage(image, 0, 0);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
      let sum = 0, squares = 0, n = pixels.length / 4;
      for (let i = 0; i < pixels.length; i += 4) {{
        const y = 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
        sum += y; squares += y * y;
      }}
      spread = Math.sqrt(Math.max(squares / n - (sum / n) ** 2, 0));
    }}
    return {{alt: image.alt, width: image.naturalWidth, height: image.naturalHeight, spread: spread}};
  }});
  const out = document.createElement("pre");
  out.id = "found";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
}});
</script></body></html>
"""
FOUND = re.compile(r'<pre id="found">(.*?)</pre>', re.S)
# The page's console lines in Chromium's log (the rest of its log is its own: D-Bus, GPU, ... on a
# headless machine), and the refusals of a file it was not allowed to load.
CONSOLE = re.compile(r":CONSOLE[:(]|Uncaught|Not allowed to load local resource")


def find_chromium() -> str | None:
    """The path of an installed Chromium or Chrome (None when there is none)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass(frozen=True)
class Shown:
    """One ``<img>`` as the browser drew it: its alt text, natural size (px) and the standard
    deviation of its pixels' luminance (0..255; 0 is a blank image)."""

    alt: str
    width: int
    height: int
    spread: float


@dataclass(frozen=True)
class BrowserCheck:
    """What the browser made of a report: its images, and the console's errors (lines)."""

    images: tuple[Shown, ...]
    console: tuple[str, ...]


def _browser(browser: str | None) -> str:
    found = browser or find_chromium()
    if found is None:
        raise ArtifactError(f"no Chromium found (looked for {', '.join(BROWSERS)}); install Debian's chromium")
    return found


@contextmanager
def _profile() -> Iterator[list[str]]:
    """The flags of one headless run with its own, temporary profile (removed after)."""
    with tempfile.TemporaryDirectory(prefix="qubocompress-chromium-") as profile:
        flags = [
            "--headless",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
        ]
        if os.geteuid() == 0:  # Chromium refuses to run as root inside its sandbox
            flags.append("--no-sandbox")
        yield flags


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{command[0]} did not finish within {TIMEOUT_S} s") from None


def check_in_browser(report: str | Path, browser: str | None = None) -> BrowserCheck:
    """Load ``report`` (a file) in headless Chromium (``browser``: its path, default
    :func:`find_chromium`); every image's size and pixel spread as drawn, and the console's errors."""
    report = Path(report).resolve()
    with _profile() as flags, tempfile.TemporaryDirectory(prefix="qubocompress-check-") as scratch:
        checker = Path(scratch) / "check.html"
        checker.write_text(CHECKER.format(src=report.as_uri()), encoding="utf-8")
        command = [
            _browser(browser),
            *flags,
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            checker.as_uri(),
        ]
        done = _run(command)
    found = FOUND.search(done.stdout)
    if found is None:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise ArtifactError(f"the browser did not load {report} (exit {done.returncode}: {tail[0]})")
    images = tuple(
        Shown(i["alt"], int(i["width"]), int(i["height"]), float(i["spread"])) for i in json.loads(unescape(found[1]))
    )
    console = tuple(line for line in done.stderr.splitlines() if CONSOLE.search(line))
    return BrowserCheck(images, console)


def screenshot(
    report: str | Path, out: str | Path, width: int = 1200, height: int = 1800, browser: str | None = None
) -> Path:
    """A PNG of the top ``width`` x ``height`` pixels of ``report`` as headless Chromium draws it,
    written atomically to ``out``; returns ``out``."""
    report, out = Path(report).resolve(), Path(out)
    with _profile() as flags, tempfile.TemporaryDirectory(prefix="qubocompress-shot-") as scratch:
        shot = Path(scratch) / "shot.png"
        command = [
            _browser(browser),
            *flags,
            f"--window-size={width},{height}",
            f"--screenshot={shot}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            report.as_uri(),
        ]
        done = _run(command)
        if not shot.is_file():
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise ArtifactError(f"the browser took no screenshot of {report} (exit {done.returncode}: {tail[0]})")
        write_bytes_atomic(out, shot.read_bytes())
    return out
