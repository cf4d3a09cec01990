"""Data sources and the per-run :class:`DataBundle`."""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.data.bundle import UNLABELED, DataBundle
    from slimtorch.data.registry import DATA_SOURCES
    from slimtorch.data.sources import build_data, split_labeled

# Public name -> module defining it, imported on first use so importing a leaf (say a config) of this
# package does not load its engine.
_EXPORTS = {
    "UNLABELED": "slimtorch.data.bundle",
    "DataBundle": "slimtorch.data.bundle",
    "DATA_SOURCES": "slimtorch.data.registry",
    "build_data": "slimtorch.data.sources",
    "split_labeled": "slimtorch.data.sources",
}
__all__ = ["DATA_SOURCES", "UNLABELED", "DataBundle", "build_data", "split_labeled"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
