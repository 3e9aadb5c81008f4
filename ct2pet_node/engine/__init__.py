"""The only torch code of ct2pet-node: networks, bridge sampler, pipeline and weights.

Importing this package is cheap: torch loads when :func:`load_pipeline` is
first called, so the CLI and the service can import it unconditionally.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ct2pet_node.engine.options import EngineOptions
    from ct2pet_node.engine.pipeline import Pipeline

__all__ = ["Pipeline", "load_pipeline"]


def load_pipeline(
    weights_dir: Path | str,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int | None = None,
    *,
    options: EngineOptions | None = None,
) -> Pipeline:
    """Verify and load a weights directory; see :func:`ct2pet_node.engine.pipeline.load_pipeline`."""
    from ct2pet_node.engine.pipeline import load_pipeline as _load

    return _load(weights_dir, device=device, precision=precision, batch_size=batch_size, options=options)


def __getattr__(name: str) -> object:
    if name == "Pipeline":
        from ct2pet_node.engine.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
