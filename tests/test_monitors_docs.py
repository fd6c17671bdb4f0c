"""docs/monitors.md: its CNN and Transformer scripts run as they stand there and print the numbers it quotes."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, run_cli

DOC = ROOT / "docs" / "monitors.md"


def section_script(heading: str) -> tuple[str, str]:
    """(the python block under ``heading``, the paragraph after it) of docs/monitors.md."""
    text = DOC.read_text()
    part = text[text.index(heading) :]
    code = re.search(r"```python\n(.*?)```", part, re.S)
    after = part[code.end() : part.index("\n#", code.end())]
    return code.group(1), after


@pytest.mark.slow
@pytest.mark.parametrize("heading", ["### A CNN with BatchNorm", "### A Transformer encoder layer"])
def test_the_documented_example_prints_the_quoted_numbers(tmp_path, heading):
    code, after = section_script(heading)
    script = tmp_path / "example.py"
    script.write_text(code)
    done = run_cli(cwd=tmp_path, script=script, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.strip().splitlines()[-2:]
    quoted = re.findall(r"prints `([^`]*)` and `([^`]*)`", after)[0]
    assert printed == list(quoted)
