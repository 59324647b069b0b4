"""A PNG of a report as headless Chromium draws it (for the README): the top WIDTH x HEIGHT pixels.

    .venv/bin/python scripts/report_screenshot.py runs/sweep-vgg/report.html docs/report.png
    .venv/bin/python scripts/report_screenshot.py REPORT.html OUT.png --width 1200 --height 2400

Checks first that every figure of the report decoded and was drawn (non-blank) and that the page
logged no console error; exit 2 with one line otherwise, or when no Chromium is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qubocompress.errors import QubocompressError
from qubocompress.report.browser import check_in_browser, find_chromium, screenshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report.html")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1200, help="pixels (default 1200)")
    parser.add_argument("--height", type=int, default=1800, help="pixels (default 1800)")
    args = parser.parse_args(argv)
    try:
        if find_chromium() is None:
            raise QubocompressError("no chromium installed (make test installs Debian's chromium where it can)")
        if not args.report.is_file():
            raise QubocompressError(f"{args.report} is not a file")
        check = check_in_browser(args.report)
        blank = [image.alt for image in check.images if image.width == 0 or image.spread == 0]
        if blank or check.console:
            raise QubocompressError(
                f"{args.report}: " + (f"figures not drawn: {', '.join(blank)}" if blank else check.console[0])
            )
        screenshot(args.report, args.out, args.width, args.height)
    except QubocompressError as exc:
        print(f"report_screenshot: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {args.width}x{args.height} of {args.report} ({len(check.images)} figures drawn)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
