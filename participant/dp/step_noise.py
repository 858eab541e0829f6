"""Fresh Gaussian noise for every DP-SGD step, drawn beside the step's forward pass.

The noise is the expensive part of a DP-SGD step on CPU: one N(0, std^2) draw
per trainable parameter per step, about 2.7-3.3 ns each with PyTorch's CPU
generator (Mersenne Twister), i.e. ~1.4-1.75 ms for the 0.53 M parameters of
the shipped 2048-256 trunk, more than the rest of a DP step on CSR inputs.
The noise does not depend on the data or the model, so a helper thread
draws it while the training thread works; the training thread helps with
whatever is left when it needs the noise. Nothing is deferred or shared
between steps: ``begin()`` starts a step's draw into one buffer, ``take()``
returns it complete before that step's update, and the following
``begin()`` draws into the other buffer, so a taken buffer is untouched
until its update is done.

The buffer is split into fixed chunks, chunk k always drawn from generator k
(each with a full state of fresh OS entropy from ``participant.dp.randomness``,
or derived from an ``unsafe_seed`` in tests), so the noise sequence is a
function of those states alone, whichever thread draws which chunk. Two buffers alternate so
step t+1's draw can start as soon as step t's noise is taken, while step t's
clipping and update read its own buffer. ``secure_mode`` draws each chunk
from its own AES-256-CTR stream (a CSPRNG) through Opacus's
floating-point-attack-resistant construction (arXiv 2107.10138: four draws
summed, halved).

One ``normal_`` call per chunk keeps the helper's hold on the GIL short.
Faster samplers built from many small numpy calls (AES-CTR bits plus
Box-Muller: 0.9 vs 1.75 ms per step alone) slowed the training thread's
small ops 4-9x through GIL hand-offs and lost overall.

Used by ``participant.dp.noisy_step`` (each step's noise for every parameter not
owed per column) and by ``participant.dp.lazy_noise`` (its helper's draws); its
generators and streams come from ``participant.dp.randomness``.
"""

from __future__ import annotations

import threading

import torch

from participant.dp.randomness import DPRandom

__all__ = ["StepNoise"]

_MIN_CHUNK = 1 << 15  # below this the per-chunk bookkeeping outweighs the parallelism
_MAX_CHUNKS = 8
_WAIT_S = 60.0


def _n_chunks(numel: int) -> int:
    return max(1, min(_MAX_CHUNKS, numel // _MIN_CHUNK)) if numel else 0


class StepNoise:
    """Two flat buffers of ``numel`` values; each step's is filled with fresh N(0, ``std``^2).

    Per step: ``begin()`` starts the draw into the next buffer, ``take()``
    returns that buffer's index once it is complete; it stays untouched until
    the second ``begin()`` after. With ``helper`` a background thread draws
    between the two calls; without it ``take()`` draws it all. Use as a
    context manager so the helper thread is stopped.
    """

    def __init__(self, numel: int, *, std: float, rng: DPRandom,
                 secure_mode: bool = False, helper: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        self.std, self.secure_mode = std, secure_mode
        self.buffers = (torch.zeros(numel, dtype=dtype), torch.zeros(numel, dtype=dtype))
        n_chunks = _n_chunks(numel)
        self._slot = 1              # buffer of the step being drawn or last taken
        self._full = [list(b.chunk(n_chunks)) if numel else [] for b in self.buffers]
        self._chunks = self._full[self._slot]
        self._row_stds: list[torch.Tensor] = []
        self._generators = [] if secure_mode else [rng.generator() for _ in range(n_chunks)]
        self._streams = [rng.stream() for _ in range(n_chunks)] if secure_mode else []
        self._cond = threading.Condition()
        self._open = False          # between begin() and take()
        self._next_chunk = len(self._chunks)  # first unclaimed chunk of the open step
        self._done = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        if helper and std > 0 and len(self._chunks) > 1:
            self._thread = threading.Thread(target=self._work, name="dp-noise", daemon=True)
            self._thread.start()

    @property
    def has_helper(self) -> bool:
        """Whether a background thread draws the noise (else ``take()`` does)."""
        return self._thread is not None

    def __enter__(self) -> StepNoise:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=_WAIT_S)
        self._thread = None

    def begin(self, numel: int | None = None, *, row_std: torch.Tensor | None = None) -> None:
        """Start drawing this step's noise (the first ``numel`` values; default all).

        With ``row_std`` (shape (rows,)) the values are read as a (rows,
        numel / rows) matrix whose row r is N(0, (std * row_std[r])^2),
        scaled on the drawing thread. The previous step's noise must be used up.
        """
        size = len(self.buffers[0])
        n = size if numel is None else numel
        if not 0 <= n <= size or (row_std is not None and (
                row_std.dim() != 1 or (n % len(row_std) if len(row_std) else n))):
            raise ValueError(f"begin(numel={numel}, row_std of shape "
                             f"{None if row_std is None else tuple(row_std.shape)}) does not "
                             f"fit this noise's buffer of {size} values")
        with self._cond:
            if self._open:
                raise RuntimeError("begin() twice without take(): a step's noise would be lost")
            self._slot = 1 - self._slot
            buffer = self.buffers[self._slot]
            # Chunk k is always drawn from generator k, so the values are a function
            # of the seed and the sizes asked for, whichever thread draws them.
            k = _n_chunks(n)
            if row_std is not None and n:  # whole rows per chunk, each with its rows' stds
                self._chunks = list(buffer[:n].view(len(row_std), -1).chunk(k))
                self._row_stds = list(row_std.unsqueeze(1).chunk(k))
            else:
                self._chunks = (self._full[self._slot] if n == size
                                else list(buffer[:n].chunk(k)) if n else [])
                self._row_stds = []
            self._open, self._next_chunk, self._done = True, 0, 0
            self._cond.notify_all()

    def take(self) -> int:
        """Index into ``buffers`` of this step's complete, fresh noise."""
        if not self._open:
            raise RuntimeError("take() without begin()")
        if self.std == 0:
            for chunk in self._chunks:
                chunk.zero_()
        else:
            while self._draw_one():  # help the helper finish
                pass
            with self._cond:
                while self._done < len(self._chunks) and self._error is None:
                    if not self._cond.wait(timeout=_WAIT_S):
                        raise TimeoutError(f"DP noise not drawn within {_WAIT_S} s")
                if self._error is not None:
                    raise self._error
        with self._cond:
            self._open = False
        return self._slot

    def _draw_one(self) -> bool:
        with self._cond:
            if not self._open or self._next_chunk >= len(self._chunks):
                return False
            k = self._next_chunk
            self._next_chunk += 1
        try:
            out = self._chunks[k]
            if self.secure_mode:
                self._streams[k].normal_(out, std=self.std)
            else:
                out.normal_(0.0, self.std, generator=self._generators[k])
            if self._row_stds:
                out.mul_(self._row_stds[k])
        except BaseException as exc:  # surfaced to the training thread by take()
            with self._cond:
                self._error = exc
                self._cond.notify_all()
            raise
        with self._cond:
            self._done += 1
            self._cond.notify_all()
        return True

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._open
                                            or self._next_chunk >= len(self._chunks)):
                    self._cond.wait()
                if self._closed:
                    return
            try:
                self._draw_one()
            except BaseException:
                return
