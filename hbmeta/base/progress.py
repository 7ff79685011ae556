"""A plain progress display for long compiled loops (no dependency).

On a terminal it redraws one line; elsewhere (logs, CI) it prints a line at
about every tenth of the work, so a long run always shows it is alive.
"""

from __future__ import annotations

import sys
import time

import numpy as np


class Progress:
    """Report ``done/total`` with elapsed and remaining time.

    Example:
        >>> p = Progress("demo", 10, enabled=False)
        >>> p.update(5); p.close()
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True, stream=None):
        self.label, self.total, self.enabled = label, max(int(total), 1), enabled
        self.stream = sys.stderr if stream is None else stream
        self.start = time.perf_counter()
        self.done = 0
        self._last_tenth = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, extra: str = "") -> None:
        self.done = done
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        frac = done / self.total
        left = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        msg = f"{self.label}: {done}/{self.total} ({100 * frac:3.0f}%) {elapsed:6.1f} s elapsed"
        if frac < 1 and left == left:
            msg += f", about {left:.0f} s left"
        if extra:
            msg += f"  {extra}"
        if self._tty:
            self.stream.write("\r" + msg.ljust(100))
            self.stream.flush()
        else:
            tenth = int(10 * frac)
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self.stream.write(msg + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()


def run_in_chunks(run, carry, total: int, *, chunk_size: int, label: str, progress: bool, describe,
                  checkpoint=None):
    """Call ``run(carry, n) -> (carry, values)`` on chunks of ``n ≤ chunk_size`` until ``total``.

    ``run`` is a compiled loop (e.g. a ``lax.scan`` of ``n`` steps, ``n`` static); between
    chunks the progress display is updated with ``describe(values_of_the_chunk)``.
    Returns the final carry and the per-step values of all chunks, concatenated.

    With ``checkpoint`` (a :class:`~hbmeta.base.checkpoint.Checkpointer`), the loop first
    continues from the checkpoint's carry if there is one, and saves its carry after chunks
    (as often as the checkpointer asks, and after the last). The chunks keep their boundaries
    (multiples of ``chunk_size``), so a resumed loop makes exactly the calls an uninterrupted
    one makes and ends with the same carry, bit for bit.
    """
    bar = Progress(label, total, enabled=progress)
    chunks, done = [], 0
    if checkpoint is not None:
        restored = checkpoint.restore(carry)
        if restored is not None:
            carry, done, values = restored
            if done > total or (done % chunk_size and done != total):
                raise ValueError(f"checkpoint {checkpoint.path}: {done} steps done; expected a multiple of "
                                 f"chunk_size={chunk_size} up to total={total} (another configuration)")
            chunks.append(np.asarray(values))
            bar.update(done, "resumed")
    while done < total:
        n = min(chunk_size, total - done)
        carry, values = run(carry, n)
        chunks.append(np.asarray(values))
        done += n
        if checkpoint is not None:  # saved before it is shown: a step count on screen is a saved state
            checkpoint.maybe_save(carry, done, np.concatenate(chunks), final=done == total)
        bar.update(done, describe(chunks[-1]))
    bar.close()
    return carry, np.concatenate(chunks)
