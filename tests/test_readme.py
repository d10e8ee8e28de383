"""The README's fresh-machine commands stay true: CI runs exactly the README's test command."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_and_quickstart_exists():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    quick, tests = blocks[0].strip(), blocks[1].strip()
    assert "examples/quickstart.toml" in quick and (REPO / "examples" / "quickstart.toml").is_file()
    assert tests in (REPO / ".ci" / "run").read_text()


README_SCREENSHOTS = ("docs/screenshots/run-report.png", "docs/screenshots/sweep-report.png")


def test_readme_shows_the_screenshots_the_browser_test_takes():
    """tests/report/test_browser.py writes these with CNNLAB_UPDATE_SCREENSHOTS=1: 1280 px wide PNGs
    of the top of a run report and of a sweep report, small enough to keep in the repository."""
    readme = (REPO / "README.md").read_text()
    images = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", readme)
    for rel in README_SCREENSHOTS:
        assert rel in images
        data = (REPO / rel).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        assert int.from_bytes(data[16:20], "big") == 1280  # IHDR width, px
        assert len(data) < 400_000
