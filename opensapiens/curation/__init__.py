"""Humans-300M-style data curation: person filter, exact and near-duplicate removal, tar shards + manifest."""

from .curate import REASONS, CurationConfig, CurationReport, curate, curate_images, image_files
from .phash import PHashIndex, hamming, phash

__all__ = ["REASONS", "CurationConfig", "CurationReport", "PHashIndex", "curate", "curate_images", "hamming",
           "image_files", "phash"]
