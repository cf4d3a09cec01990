"""``eval_mode(model)``: run a block with the model in eval mode, then give every submodule its own mode back.

``model.train(was_training)`` restores one flag on every submodule; a model whose parts were in different
modes (a frozen BatchNorm in eval inside a training network, a teacher kept in eval) would come back changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; afterwards each submodule has the mode it had before.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
        >>> net[1].eval()  # doctest: +ELLIPSIS
        Dropout(...)
        >>> with eval_mode(net):
        ...     assert not net.training
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
