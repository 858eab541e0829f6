"""Where every privacy-protecting random draw of a DP round comes from.

DP-SGD's guarantee (Abadi et al. 2016) holds only if whoever sees the
released delta cannot reproduce the Poisson batches and the Gaussian noise.
``torch.Generator().manual_seed(s)`` keeps only the low 32 bits of ``s``
(PyTorch's CPU Mersenne Twister is initialised from ``uint32(s)``), so a
coordinator could search 2^32 seeds, subtract the noise and read the clipped,
noiseless update. Here no generator is ever seeded from an integer:

- default: each ``torch.Generator`` gets a full Mersenne Twister state (624
  32-bit words, 19937 bits) read from ``os.urandom`` and installed with
  ``Generator.set_state``. Nothing short of the whole state reproduces the
  stream, and the stream is never published (only noise added to private
  clipped sums), so there is no seed to enumerate. PyTorch's fast
  ``normal_`` is unchanged: same speed as before.
- ``secure_mode`` (Opacus's name): draws come from AES-256 in counter mode
  (NIST SP 800-38A) keyed with 32 bytes of ``os.urandom``, a CSPRNG, with
  Opacus's floating-point-attack-resistant Gaussian (sum of four draws,
  halved; arXiv 2107.10138).
- ``unsafe_seed``: tests and benchmarks only. Everything derives from one
  integer seed (full child states drawn from a seeded root), so it is exactly
  as searchable as the old construction; it logs a warning every time.

Each consumer (the sampler, ``participant.dp.sampling``; each noise chunk,
``participant.dp.step_noise``; each owed-noise weight, ``participant.dp.lazy_noise``)
gets its own generator or stream, so helper threads never share one. Nothing
else draws DP randomness.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "MT_STATE_WORDS",
    "CsprngStream",
    "DPRandom",
    "is_integer_seeded",
    "mt_state_words",
]

log = logging.getLogger(__name__)

MT_STATE_WORDS = 624  # mt19937's state: 624 x 32 bits (19937 used)
# torch's CPU generator state (CPUGeneratorImplState): u64 the_initial_seed, i32 left,
# i32 seeded, u64 next, u64 state[624], then cached-normal fields (zeroed: none cached).
_STATE_BYTES = 5056
_WORDS_AT = 24
_MT_INIT_MULT = 1812433253  # mt19937's init_genrand multiplier (Matsumoto & Nishimura 1998)


def _generator_from_words(words: np.ndarray, initial_seed: int) -> torch.Generator:
    state = bytearray(_STATE_BYTES)
    state[0:8] = np.uint64(initial_seed).tobytes()
    state[8:12] = np.int32(1).tobytes()    # left = 1: the first draw twists the state
    state[12:16] = np.int32(1).tobytes()   # seeded
    state[_WORDS_AT:_WORDS_AT + 8 * MT_STATE_WORDS] = words.astype(np.uint64).tobytes()
    g = torch.Generator()
    g.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
    return g


def mt_state_words(g: torch.Generator) -> np.ndarray:
    """The 624 Mersenne Twister words of a CPU generator's state."""
    raw = g.get_state().numpy().tobytes()
    if len(raw) != _STATE_BYTES:
        raise RuntimeError(f"unexpected torch CPU generator state of {len(raw)} bytes, "
                           f"expected {_STATE_BYTES}: check participant.dp.randomness "
                           "against this torch")
    return np.frombuffer(raw[_WORDS_AT:_WORDS_AT + 8 * MT_STATE_WORDS], np.uint64).astype(
        np.uint32)


def is_integer_seeded(words: np.ndarray) -> bool:
    """Whether an (untwisted) MT state is ``init_genrand(words[0])``, i.e. a 32-bit seed's."""
    x = int(words[0])
    for i in range(1, 8):
        x = (_MT_INIT_MULT * (x ^ (x >> 30)) + i) & 0xFFFFFFFF
        if int(words[i]) != x:
            return False
    return True


class CsprngStream:
    """AES-256-CTR keystream turned into uniforms and Gaussians (``secure_mode``)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError(f"CsprngStream needs a 32-byte key, got {len(key)} bytes")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._zeros = b""
        self._buf = bytearray()
        self._bits = torch.empty(0, dtype=torch.int64)
        self._uniform = torch.empty(0, dtype=torch.float64)

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` float64 values in (0, 1), 53 random bits each (a reused buffer)."""
        size = 8 * n
        if len(self._zeros) < size:  # buffers kept: fresh multi-MB pages cost more than AES
            self._zeros = bytes(size)
            self._buf = bytearray(size + 15)  # update_into wants room for a block more
            self._bits = torch.frombuffer(self._buf, dtype=torch.int64, count=n)
            self._uniform = torch.empty(n, dtype=torch.float64)
        self._enc.update_into(memoryview(self._zeros)[:size], self._buf)
        bits = self._bits[:n].bitwise_and_((1 << 53) - 1)
        u = self._uniform[:n]
        u.copy_(bits)
        return u.add_(0.5).mul_(2.0 ** -53)

    def normal_(self, out: torch.Tensor, *, std: float) -> torch.Tensor:
        """Fill ``out`` with N(0, std^2): Box-Muller, four draws summed and halved (Opacus)."""
        n = out.numel()
        half = (n + 1) // 2
        u = self.uniform(8 * half).view(4, 2, half)
        r = u[:, 0].log_().mul_(-2.0).sqrt_()
        theta = u[:, 1].mul_(2.0 * torch.pi)
        flat = out.view(-1)
        flat[:half].copy_(torch.einsum("kh,kh->h", r, theta.cos()))
        flat[half:].copy_(torch.einsum("kh,kh->h", r, theta.sin_())[:n - half])
        return flat.mul_(std / 2.0).view(out.shape)


class DPRandom:
    """The root of one DP round's randomness: OS entropy, or an unsafe seed for tests."""

    def __init__(self, *, unsafe_seed: int | None = None) -> None:
        self._root: torch.Generator | None = None
        if unsafe_seed is not None:
            log.warning("UNSAFE: DP randomness derived from the seed %d; a party that "
                        "searches seeds can subtract this noise (tests and benchmarks only)",
                        unsafe_seed)
            self._root = torch.Generator().manual_seed(int(unsafe_seed))

    @classmethod
    def _child(cls, root: torch.Generator) -> DPRandom:
        rng = cls()
        rng._root = root
        return rng

    @property
    def seeded(self) -> bool:
        """Whether this randomness is reproducible from an integer (the unsafe path)."""
        return self._root is not None

    def _bytes(self, n: int) -> bytes:
        if self._root is None:
            return os.urandom(n)
        return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=self._root
                             ).numpy().tobytes()

    def generator(self) -> torch.Generator:
        """A fresh CPU generator whose whole Mersenne Twister state is new entropy."""
        raw = self._bytes(4 * MT_STATE_WORDS + 8)
        words = np.frombuffer(raw[:4 * MT_STATE_WORDS], np.uint32)
        seed_field = int(np.frombuffer(raw[-8:], np.uint64)[0] >> np.uint64(1))
        return _generator_from_words(words, seed_field)

    def stream(self) -> CsprngStream:
        """A fresh CSPRNG stream (AES-256-CTR) with a key of 32 fresh bytes."""
        return CsprngStream(hashlib.sha256(self._bytes(32)).digest() if self.seeded
                            else os.urandom(32))

    def spawn(self) -> DPRandom:
        """An independent source for one consumer (OS entropy again, or derived if seeded)."""
        return DPRandom() if self._root is None else DPRandom._child(self.generator())
