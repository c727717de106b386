"""The ``python`` blocks of the documentation, as the tests run them.

A page's blocks run in page order, in one namespace, statement by statement, so
that what a block claims in a trailing comment is checked:

- ``expr  # 6`` or ``name = expr  # 6``: the value equals the literal ``6``;
- ``print(expr)  # 6``: the statement prints ``6``.

The claim is the longest leading part of the comment that is a Python literal
(``# 6; a second run reads it back`` claims ``6``). After an expression, a
comment that starts with no literal (``# one node at a time``) claims nothing;
after ``print`` it is the printed line, ``...`` standing for any text
(``# node 'x' failed: ...``). Statements inside functions and classes claim
nothing when the block runs.

A block that cannot run here is marked by an HTML comment right before it,
``<!-- not run: needs a real KFP host -->``, and skipped. A block whose first
line is a path comment (``# my_counter/__init__.py``) is a file: it is written
there, under the working directory, instead of being run.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_BLOCK = re.compile(
    r"(?:<!--\s*not run:\s*(?P<reason>.*?)\s*-->[ \t]*\n)?^```python[ \t]*\n(?P<code>.*?)^```", re.DOTALL | re.MULTILINE
)
_FILE = re.compile(r"# ([\w./-]+\.py)\n")


@dataclasses.dataclass(frozen=True)
class Block:
    """One ``python`` block of a page."""

    page: str  #: the page, relative to the repository
    number: int  #: 1 for the page's first python block
    line: int  #: the line of the block's first code line in the page
    code: str
    not_run: str | None  #: the reason given by ``<!-- not run: ... -->``, or None

    @property
    def file(self) -> str | None:
        """The path a file block is written to, or None."""
        found = _FILE.match(self.code)
        return found.group(1) if found else None


def page_blocks(page: str) -> list[Block]:
    """Every python block of ``page`` (a path relative to the repository), in page order."""
    text = (ROOT / page).read_text()
    return [
        Block(page, number, text.count("\n", 0, found.start("code")) + 1, found.group("code"), found.group("reason"))
        for number, found in enumerate(_BLOCK.finditer(text), 1)
    ]


def run_blocks(page: str, namespace: dict, replace: dict[str, str] | None = None) -> list[str]:
    """Run every block of ``page`` that is not marked not-run, in order, in ``namespace``; check its claims.

    ``replace`` maps text of the page to what runs instead (a fixed folder such as
    ``/tmp/demo`` to the test's own ``tmp_path``), one line for one line.
    Returns the code of the blocks that ran or were written, in order.
    """
    done = []
    for block in page_blocks(page):
        if block.not_run is not None:
            continue
        for old, new in (replace or {}).items():
            assert "\n" not in old + new, "replace one line's text by one line's text"
            block = dataclasses.replace(block, code=block.code.replace(old, new))
        if block.file is not None:
            target = Path(block.file)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
        else:
            run_block(block, namespace)
        done.append(block.code)
    assert done, f"{page} has no python block to run"
    return done


def run_block(block: Block, namespace: dict) -> None:
    """Run one block in ``namespace``; each claim (see the module docstring) must hold."""
    where = f"{block.page}, block {block.number}"
    tree = ast.parse(block.code, where)
    ast.increment_lineno(tree, block.line - 1)  # tracebacks name the page's own lines
    tree = _Claims(_comments(block)).visit(tree)
    ast.fix_missing_locations(tree)
    namespace[_CHECK] = _Checker(where)
    exec(compile(tree, where, "exec"), namespace)  # noqa: S102 - the docs' own code


_CHECK = "__doc_claims__"


class _Claims(ast.NodeTransformer):
    """Wrap each statement that makes a claim in a call of the checker (not inside functions or classes)."""

    def __init__(self, comments: dict[int, str]):
        self.comments = comments

    def visit_FunctionDef(self, node):  # run later, maybe elsewhere: its prints claim nothing here
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

    def visit_Expr(self, node):
        comment = self.comments.get(node.end_lineno)
        if comment is None:
            return node
        if _is_print(node):
            thunk = ast.Lambda(_no_arguments(), node.value)
            return ast.copy_location(ast.Expr(_check_call("printed", node.lineno, comment, thunk)), node)
        if claim_of(comment)[0]:
            return ast.copy_location(ast.Expr(_check_call("value", node.lineno, comment, node.value)), node)
        return node

    def visit_Assign(self, node):
        comment = self.comments.get(node.end_lineno)
        if comment is None or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            return node
        if not claim_of(comment)[0]:
            return node
        name = ast.Name(node.targets[0].id, ast.Load())
        return [node, ast.copy_location(ast.Expr(_check_call("value", node.lineno, comment, name)), node)]


def _no_arguments():
    return ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])


def _check_call(kind, line, comment, value):
    method = ast.Attribute(ast.Name(_CHECK, ast.Load()), kind, ast.Load())
    return ast.Call(method, [ast.Constant(line), ast.Constant(comment), value], [])


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def value(self, line, comment, value):
        expected = claim_of(comment)[1]
        assert value == expected, f"{self.where}, line {line} says {comment!r}; the value is {value!r}"
        return value

    def printed(self, line, comment, thunk):
        out = io.StringIO()
        with _Tee(out):
            thunk()
        lines = [text.strip() for text in out.getvalue().strip().splitlines()]
        is_claim, expected = claim_of(comment)
        if is_claim:
            ok = any(text in {str(expected), repr(expected)} for text in lines)
        else:
            pattern = ".*".join(re.escape(part.strip()) for part in comment.split("..."))
            ok = any(re.fullmatch(pattern, text) for text in lines)
        assert ok, f"{self.where}, line {line} says {comment!r}; it printed {out.getvalue()!r}"


def claim_of(comment: str) -> tuple[bool, object]:
    """``(True, value)`` for the longest leading literal of ``comment``, else ``(False, None)``."""
    cuts = [len(comment)] + [m.start() for m in re.finditer(r"[;,(]| - | -- ", comment)][::-1]
    for cut in sorted(set(cuts), reverse=True):
        try:
            return True, ast.literal_eval(comment[:cut].strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return False, None


def _comments(block: Block) -> dict[int, str]:
    """Trailing comments by page line (a comment alone on its line is prose, not a claim)."""
    found = {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(block.code).readline):
        line = token.start[0] + block.line - 1
        if token.type == tokenize.COMMENT and line in code_lines:
            found[line] = token.string[1:].strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            code_lines.add(token.end[0] + block.line - 1)
    return found


def _is_print(statement) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Call)
        and isinstance(statement.value.func, ast.Name)
        and statement.value.func.id == "print"
    )


class _Tee:
    """Copy what is printed to ``out`` while it still reaches ``sys.stdout`` (and pytest's capture)."""

    def __init__(self, out):
        self.out = out

    def write(self, text):
        self.out.write(text)
        return self.previous.write(text)

    def flush(self):
        self.previous.flush()

    def __enter__(self):
        self.previous, sys.stdout = sys.stdout, self
        return self

    def __exit__(self, *exc):
        sys.stdout = self.previous
