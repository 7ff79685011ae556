"""Long subprocess work of the suite, started when collection ends, beside the in-process tests.

The in-process tests are mostly compile-bound on one core, so the second core
is idle most of the time; work that runs in subprocesses (the documents'
examples, the 4-device sharding checks) starts at once and fills it. A test
module declares ``BACKGROUND = {"fixture_name": start}``; tests/conftest.py
calls ``start()`` when a selected test uses that fixture, and the fixture
takes the started work with :func:`get` (starting it itself when run alone).
"""

from __future__ import annotations

_started: dict = {}


def get(name: str, start):
    """The work ``name``, started by ``start()`` on first use."""
    if name not in _started:
        _started[name] = start()
    return _started[name]
