"""tools/mutations.py stays usable: every deliberate fault still applies to the code as it is now,
and every test named to catch it exists."""

from __future__ import annotations

import re

from harness import REPO_ROOT
from tools.mutations import FAULTS


def test_every_fault_applies_once_and_names_existing_tests():
    assert len(FAULTS) >= 8
    for fault in FAULTS:
        assert (REPO_ROOT / fault.file).read_text().count(fault.original) == 1, fault.name
        assert fault.faulty != fault.original
        for test in fault.tests:
            path, name = test.split("::")
            assert re.search(rf"^def {name}\(", (REPO_ROOT / path).read_text(), re.MULTILINE), test
