"""The README's and the docs' Python code blocks run as written and print what they say they print;
the ops' docstrings read as plain text in ``help()``; the docs' links land on headings that exist.

Blocks fenced ```python run; excerpts of the source, which need the surrounding code, are fenced
```py and are not run. A page's blocks share one namespace, as a reader's session would.

Printed output is checked against the comments that show it. The expected output of a
``print(...)`` call is

- the comment on the line where the call ends: ``print(logits.shape)  # (1797, 10)``, then
- the comment lines right below that line, up to the first line that is not a comment:
  ``# sigmoid 0.0 939008 939008``.

A comment line that starts with ``#:`` is commentary, never output: put remarks there (or in
the prose), not after the output on its line. Each top-level statement that calls ``print`` runs
with its stdout captured, and what it printed must match the expected output of its prints, in
order, as doctest matches (``...`` stands for any text, and runs of spaces and line breaks are
equal, so a long line may be wrapped over several comment lines). Every such statement is
checked, so a print must show its output. Statements without a ``print(`` are not checked (the
per-epoch lines ``fit`` logs hold timings). The outputs shown are those on one CPU device, as the
tests run; with more devices the outputs are not compared.
"""
import ast
import contextlib
import doctest
import inspect
import io
import pathlib
import re
import textwrap
import tokenize

import jax
import pytest

import purebp

ROOT = pathlib.Path(__file__).parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
# The public ops: the names purebp/__init__.py imports from its op modules.
OPS = sorted(alias.name for node in ast.parse((ROOT / "purebp" / "__init__.py").read_text()).body
             if isinstance(node, ast.ImportFrom) for alias in node.names)


def python_blocks(page):
    """``(first line, source)`` of each ```python block of ``page``, the line numbered in the page."""
    text = (ROOT / page).read_text()
    return [(text.count("\n", 0, match.start(1)) + 1, textwrap.dedent(match.group(1)))
            for match in re.finditer(r"^ *```python\n(.*?)^ *```", text, flags=re.DOTALL | re.MULTILINE)]


def expected_output(source, tree):
    """``{index of a top-level statement of tree: the output its prints' comments show}``."""
    lines = source.splitlines()
    trailing = {token.start[0]: token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT and not lines[token.start[0] - 1].lstrip().startswith("#")}
    expected = {}
    for index, statement in enumerate(tree.body):
        shown = []
        calls = [node for node in ast.walk(statement)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
        for call in sorted(calls, key=lambda node: node.end_lineno):
            comments = [trailing[call.end_lineno]] if call.end_lineno in trailing else []
            for line in lines[call.end_lineno:]:
                if not line.lstrip().startswith("#"):
                    break
                comments.append(line.strip())
            shown += [comment[1:].strip() for comment in comments if not comment.startswith("#:")]
        if calls:
            expected[index] = "\n".join(shown)
    return expected


@pytest.mark.slow  # the pages train models: ~100 s in all, so in .ci/run's slow pass
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)])
def test_code_blocks_run_and_print_what_they_show(page, monkeypatch, tmp_path):
    pytest.importorskip("sklearn", reason="some blocks load scikit-learn's datasets")
    monkeypatch.chdir(tmp_path)  # blocks that save files write them here
    compare = jax.device_count() == 1
    checker, flags = doctest.OutputChecker(), doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    namespace, x64, mismatches = {}, jax.config.jax_enable_x64, []
    try:
        for first_line, source in python_blocks(page):
            tree = ast.parse(source)
            expected = expected_output(source, tree)
            ast.increment_lineno(tree, first_line - 1)  # tracebacks name the page's own lines
            for index, statement in enumerate(tree.body):
                code = compile(ast.Module(body=[statement], type_ignores=[]), str(ROOT / page), "exec")
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    exec(code, namespace)
                if compare and index in expected and not checker.check_output(expected[index] + "\n", printed.getvalue(), flags):
                    mismatches.append(f"{page}:{statement.lineno}: the comments show\n{expected[index]}\n"
                                      f"but it printed\n{printed.getvalue()}")
    finally:
        jax.config.update("jax_enable_x64", x64)  # a page may turn x64 on globally
    if mismatches:
        pytest.fail("\n".join(mismatches), pytrace=False)


def test_expected_output_convention():
    source = textwrap.dedent("""\
        print(1)  # 1
        for name in "ab":
            print(name)
        # a
        #: commentary, not output
        # b
        x = 2  # a comment after code that is not a print
        print(x,
              x)  # 2 2
        """)
    assert expected_output(source, ast.parse(source)) == {0: "1", 1: "a\nb", 3: "2 2"}


LATEX = re.compile(r":math:|\\[A-Za-z]+")


@pytest.mark.parametrize("name", OPS)
def test_docstring_formulas_read_as_plain_text(name):
    """``help(op)`` shows the summary and the backward rule as they are: no reST math, no LaTeX."""
    lines = inspect.getdoc(getattr(purebp, name)).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Backward:")]
    assert starts, f"{name}'s docstring has no line starting 'Backward:'"
    backward = lines[starts[0]:lines.index("", starts[0]) if "" in lines[starts[0]:] else None]
    for line in [lines[0], *backward]:
        assert not LATEX.search(line), f"{name}'s docstring: {line!r} holds :math: or a LaTeX macro"


def test_ops_are_found():
    assert len(OPS) == 29 and {"conv", "max_pool", "softmax_cross_entropy_with_integer_labels"} <= set(OPS)


def heading_anchors(page):
    """GitHub's anchors for the headings of ``page``: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^ *```.*?^ *```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", text, flags=re.MULTILINE)}


def links(source):
    """``(where, target path, anchor or None)`` for each relative link of a page, or each op's derivation
    link for ``source == "docstrings"``."""
    if source == "docstrings":
        for name in OPS:
            for target, anchor in re.findall(r"Derivation: (docs/\S+?\.md)(?:#([\w-]+))?", inspect.getdoc(getattr(purebp, name))):
                yield f"purebp.{name}", ROOT / target, anchor or None
        return
    for target, anchor in re.findall(r"\]\(([^)#:\s]*\.md)?(?:#([^)\s]+))?\)", (ROOT / source).read_text()):
        yield source, (ROOT / source).parent / target if target else ROOT / source, anchor or None


@pytest.mark.parametrize("source", [*PAGES, "docstrings"])
def test_links_land_on_a_page_and_heading(source):
    broken = [f"{where} -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}#{anchor}"
              for where, path, anchor in links(source)
              if not path.is_file() or (anchor is not None and anchor not in heading_anchors(path))]
    assert not broken, "links to no page or no heading there:\n" + "\n".join(broken)
