"""The run writer of a process that must not publish the run: every process but the main one of a distributed run.

All processes of a distributed run compute the same stages (their compiled steps exchange data), but only
process 0 writes the run directory. The others write into a private temporary directory, removed when the
run ends, so that every stage runs the same code in every process.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hbmeta.run.rundir import RunWriter


class ScratchWriter(RunWriter):
    """A :class:`~hbmeta.run.rundir.RunWriter` that writes into a temporary directory and publishes nothing.

    Example:
        >>> w = ScratchWriter("runs/never-written")
        >>> _ = w.write_text("a.txt", "x")
        >>> os.path.exists(w.path("a.txt")), w.commit({}) == os.path.abspath("runs/never-written")
        (True, True)
        >>> os.path.exists(w.tmp), os.path.exists("runs/never-written")
        (False, False)
    """

    def __init__(self, final_path: str):  # no lock, no reserved directory: nothing is published
        self.final = os.path.abspath(final_path)
        self.tmp = tempfile.mkdtemp(prefix="hbmeta-scratch-")
        self.files: list[str] = []

    def commit(self, info: dict) -> str:
        """Remove the temporary files; returns the path the main process publishes."""
        self.discard()
        return self.final

    def discard(self, *, keep_checkpoints: bool = False) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
