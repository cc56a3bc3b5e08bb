"""Look at report.html as a person would: headless Chromium takes a full-page screenshot of a run's report.

    python scripts/report_screenshot.py [RUN] [--out report.png] [--height 9000]

Without RUN it trains `simplecnn` on the digits for three epochs first (a few seconds, no download). Needs
Chromium (`apt-get install chromium` on Debian); prints the screenshot's path, then open it and check that
every section shows: results, warnings, every plot, accuracy per class, the model, the settings.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cnnkit
from cnnkit.inspect.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path, help="a finished run folder (default: train one on the digits)")
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    parser.add_argument("--height", type=int, default=9000, help="page height in pixels to capture")
    args = parser.parse_args()
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        sys.exit("no Chromium found: apt-get install chromium (Debian), then run this again")
    run_dir = args.run or Path(
        cnnkit.train(model="simplecnn", epochs=3, lr="auto", out=tempfile.mkdtemp() + "/digits").dir
    )
    page, _ = write_report(run_dir)
    with tempfile.TemporaryDirectory() as profile:  # a throwaway browser profile: nothing of the user's is read
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",  # root in a container has no user namespace for the sandbox
                "--disable-gpu",
                f"--user-data-dir={profile}",
                f"--window-size=1200,{args.height}",
                f"--screenshot={args.out.resolve()}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(args.out.resolve())


if __name__ == "__main__":
    main()
