"""tools/coverage_site: lines run in a verbatim copy of a function (a kfp component) count for the original."""

import importlib.util
import pathlib
import textwrap

import coverage

SITE = pathlib.Path(__file__).resolve().parents[1] / "tools" / "coverage_site" / "sitecustomize.py"


def load_site():
    spec = importlib.util.spec_from_file_location("ff_coverage_site_under_test", SITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORIGINAL = '''\
"""module docstring"""

LIMIT = 3


def copied(x):
    if x > LIMIT:
        return "big"
    return "small"


def edited(x):
    return x + 1
'''

COPY = '''\
import os
import sys

def copied(x):
    if x > LIMIT:
        return "big"
    return "small"

def edited(x):
    return x + 2

def component(x):
    return copied(x)
'''


def test_only_verbatim_copies_are_credited_line_for_line_and_the_copy_is_dropped(tmp_path):
    original = tmp_path / "runtime.py"
    copy = tmp_path / "ephemeral_component.py"
    original.write_text(ORIGINAL)
    copy.write_text(COPY)
    data = coverage.CoverageData(no_disk=True)
    # the copy ran: copied() down its "big" branch, edited(), and the component wrapper
    data.add_lines({str(copy): {1, 2, 4, 5, 6, 9, 10, 12, 13}, str(original): {1, 3, 6, 12}})

    credited = load_site().credit_copied_functions(data, str(copy), str(original))

    # copy lines 4-6 are original lines 6-8; edited() differs from its original, the wrapper has none
    assert credited == {6, 7, 8}
    assert sorted(data.lines(str(original))) == [1, 3, 6, 7, 8, 12]
    assert data.lines(str(copy)) == []


def test_a_copy_whose_text_differs_anywhere_credits_nothing(tmp_path):
    original = tmp_path / "runtime.py"
    copy = tmp_path / "ephemeral_component.py"
    original.write_text(ORIGINAL)
    copy.write_text(textwrap.dedent(COPY).replace('return "small"', "return 'small'"))
    data = coverage.CoverageData(no_disk=True)
    data.add_lines({str(copy): {4, 5, 7}})
    assert load_site().credit_copied_functions(data, str(copy), str(original)) == set()
    assert data.lines(str(original)) is None
