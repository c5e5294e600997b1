"""The README's fault table and the suite agree: every fault test is listed with what it proves,
and the table names no test that does not exist; at least 20 distinct faults."""

from __future__ import annotations

import ast
import re

from tests.faults.harness import ROOT


def test_the_readme_lists_every_fault_test():
    tree = ast.parse((ROOT / "tests/faults/test_faults.py").read_text(encoding="utf-8"))
    tests = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("### The fault-injection suite"):]
    rows = re.findall(r"^\| \d+ \| (.+?) \| `(test_\w+)` \| (.+?) \|$", table, flags=re.M)
    listed = {name for _, name, _ in rows}
    assert listed == tests, {"not in the README": tests - listed, "no such test": listed - tests}
    assert len(rows) >= 20 and all(fault.strip() and proves.strip() for fault, _, proves in rows)
