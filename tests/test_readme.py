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
