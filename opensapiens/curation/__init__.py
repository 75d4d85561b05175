"""Humans-300M-style data curation: person filter, exact and near-duplicate removal, tar shards + manifest."""

from .curate import REASONS, CurationConfig, CurationReport, curate, image_files
from .phash import PHashIndex, hamming, phash

__all__ = ["REASONS", "CurationConfig", "CurationReport", "PHashIndex", "curate", "hamming", "image_files", "phash"]
