"""A weights directory to a :class:`~ct2pet_node.engine.pipeline.Pipeline` on a device.

Apart from the pipeline because loading is the one place that touches the
disk (checksums, state dicts) and picks the device; the pipeline itself only
runs what it is given, so tests and training build it from networks in memory.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from ct2pet_node.engine.device import resolve_device
from ct2pet_node.engine.networks import build_networks
from ct2pet_node.engine.options import EngineOptions
from ct2pet_node.engine.pipeline import Pipeline
from ct2pet_node.engine.weights import load_manifest, load_state_dicts

log = structlog.get_logger(__name__)


def load_pipeline(
    weights_dir: Path | str,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int | None = None,
    *,
    options: EngineOptions | None = None,
) -> Pipeline:
    """Verify and load a weights directory onto a device.

    ``precision`` and ``batch_size``, when given, override those of ``options``
    (the fast paths; default :class:`EngineOptions`: the exact path plus what
    is exact on the device).

    Raises
    ------
    WeightsError
        A file is missing, truncated or fails its checksum, or the weights do not fit.
    EngineError
        The device or precision is unavailable.
    """
    weights_dir = Path(weights_dir)
    torch_device = resolve_device(device)
    manifest = load_manifest(weights_dir)
    states = load_state_dicts(weights_dir, verify=True)
    networks = build_networks(manifest.architecture, states, origin=f"weights in {weights_dir}")
    pipeline = Pipeline(manifest, networks, torch_device, precision, batch_size, options)
    log.info(
        "pipeline_loaded",
        model_id=manifest.model_id,
        device=str(torch_device),
        options=pipeline.options,
        batch_size=pipeline.batch_size,
        decode_batch_size=pipeline.decode_batch_size,
    )
    return pipeline
