"""Data sources and the per-run :class:`DataBundle`."""

from slimtorch.data import text as _text  # noqa: F401  (registers the `text` source)
from slimtorch.data.bundle import UNLABELED, DataBundle
from slimtorch.data.sources import DATA_SOURCES, build_data, split_labeled

__all__ = ["DATA_SOURCES", "UNLABELED", "DataBundle", "build_data", "split_labeled"]
