"""The README's and the docs' Python code blocks run as written.

Blocks fenced ```python must run; excerpts of the source, which need the surrounding code, are
fenced ```py and are not run.
"""
import pathlib
import re
import textwrap

import jax
import pytest

ROOT = pathlib.Path(__file__).parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]


def python_blocks(page):
    return re.findall(r"^ *```python\n(.*?)^ *```", (ROOT / page).read_text(), flags=re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)])
def test_code_blocks_run(page, monkeypatch, tmp_path):
    pytest.importorskip("sklearn", reason="some blocks load scikit-learn's datasets")
    monkeypatch.chdir(tmp_path)  # blocks that save files write them here
    namespace, x64 = {}, jax.config.jax_enable_x64
    try:
        for block in python_blocks(page):  # a page's blocks share one namespace, as a reader's session would
            exec(compile(textwrap.dedent(block), f"{page} code block", "exec"), namespace)
    finally:
        jax.config.update("jax_enable_x64", x64)  # a page may turn x64 on globally
