"""Perceptual hashing for near-duplicate removal: 64-bit DCT pHash and a Hamming-radius index over many hashes.

pHash (Zauner 2010, as popularised by ``imagehash.phash``): luma -> 32x32 (area resampling) -> 2-D DCT-II -> the
8x8 lowest frequencies -> bit = coefficient > their median, read row-major with the first bit most significant.
Re-encoding, resizing and mild colour changes move a few bits; different images differ in about half of them.
"""

from __future__ import annotations

import cv2
import numpy as np

_N, _K = 32, 8
# Unnormalised DCT-II basis: X_k = sum_n x_n cos(pi (2n + 1) k / 2N). A common scale of all coefficients does not
# change which are above the median, so no normalisation is needed.
_BASIS = np.cos(np.pi * (2 * np.arange(_N)[None, :] + 1) * np.arange(_K)[:, None] / (2 * _N))  # (8, 32)


def phash(image: np.ndarray) -> int:
    """64-bit perceptual hash of an RGB uint8 (H, W, 3) or grayscale (H, W) image."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    small = cv2.resize(gray.astype(np.float32), (_N, _N), interpolation=cv2.INTER_AREA).astype(np.float64)
    low = _BASIS @ small @ _BASIS.T  # (8, 8) lowest frequencies
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class PHashIndex:
    """Find a stored hash within Hamming distance ``radius`` of a query, without comparing against every hash.

    Multi-index hashing (Norouzi et al., 2012): the 64 bits are cut into ``radius + 1`` bands; two hashes within
    ``radius`` bits agree exactly on at least one band (pigeonhole), so only hashes sharing a band value are checked.
    """

    def __init__(self, radius: int = 6):
        if not 0 <= radius < 64:
            raise ValueError(f"pHash radius must be in [0, 63], got {radius}")
        self.radius = radius
        edges = np.linspace(0, 64, radius + 2).round().astype(int)
        self._bands = [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in zip(edges[:-1], edges[1:])]
        self._tables: list[dict[int, list[int]]] = [{} for _ in self._bands]
        self.hashes: list[int] = []
        self.labels: list[object] = []

    def __len__(self) -> int:
        return len(self.hashes)

    def add(self, h: int, label: object = None) -> None:
        i = len(self.hashes)
        self.hashes.append(h)
        self.labels.append(label)
        for (shift, mask), table in zip(self._bands, self._tables):
            table.setdefault((h >> shift) & mask, []).append(i)

    def query(self, h: int) -> tuple[object, int] | None:
        """(label, distance) of the closest stored hash within the radius (earliest on ties), or None."""
        best: tuple[int, int] | None = None
        for (shift, mask), table in zip(self._bands, self._tables):
            for i in table.get((h >> shift) & mask, ()):
                d = hamming(h, self.hashes[i])
                if d <= self.radius and (best is None or (d, i) < best):
                    best = (d, i)
        return None if best is None else (self.labels[best[1]], best[0])
