"""The README opens with the two set-up commands (demo, tests), and CI runs the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_first_two_commands_are_demo_and_tests():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    demo, tests = blocks[0], blocks[1]
    assert "\n" not in demo and "\n" not in tests
    assert demo.endswith("retinanet demo")
    assert "torch==2.13.0" in demo and "pip install -q -e ." in demo
    assert tests.endswith("python -m pytest -q -p no:cacheprovider")
    assert "torch==2.13.0" in tests and '".[test]"' in tests


def test_ci_runs_the_readme_test_line_verbatim():
    tests = _bash_blocks((ROOT / "README.md").read_text())[1]
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_readme_python_example_names_real_api():
    import retinanet

    text = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    names = re.search(r"from retinanet import (.+)", code).group(1).split(", ")
    for name in names:
        assert hasattr(retinanet, name.strip()), name
    from retinanet.config import list_presets

    for preset in re.findall(r'load_config\("([^"]+)"', code):
        assert preset in list_presets()
