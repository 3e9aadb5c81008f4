"""What one Ray actor runs: the node's pipeline, loaded once, after checking it is the node's model.

This module imports no ray: ``driver`` wraps :class:`ChunkActor` with
``ray.remote``. Arrays in and out are numpy, (N, H, W) float32 regions in HU
and (N, S, S) float32 PET on the model grid, as
:meth:`~ct2pet_node.engine.pipeline.Pipeline.translate_region` takes and gives.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ct2pet_node import __version__
from ct2pet_node.engine.options import EngineOptions
from ct2pet_node.engine.weights import MANIFEST_NAME, load_manifest, sha256_of
from ct2pet_node.errors import Ct2PetError


@dataclass(frozen=True, slots=True)
class ActorSpec:
    """What an actor loads, and what the node expects it to be.

    Attributes
    ----------
    weights_dir : str
        The weights directory as the actor's host sees it (a path every
        worker shares, or the same path on each).
    model_id, manifest_sha256, package_version : str
        The node's model, the sha256 of its ``manifest.json`` and its
        ct2pet-node version; an actor whose own differ refuses to serve.
    device : str
        ``"cpu"``, or ``"cuda"`` for an actor that holds a GPU.
    options : EngineOptions
        The node's ``[engine]`` fast paths, so actors compute what the node would.
    """

    weights_dir: str
    model_id: str
    manifest_sha256: str
    package_version: str
    device: str
    options: EngineOptions


def identity_problem(spec: ActorSpec, package_version: str = __version__) -> str | None:
    """Why the weights at ``spec.weights_dir`` here are not the node's model, or None when they are."""
    where = f"Ray worker {socket.gethostname()}"
    weights_dir = Path(spec.weights_dir)
    try:
        manifest = load_manifest(weights_dir)
        manifest_sha256 = sha256_of(weights_dir / MANIFEST_NAME)
    except (Ct2PetError, OSError) as error:
        return f"{where} cannot read the weights at {weights_dir}: {error}"
    if manifest.model_id != spec.model_id:
        return (
            f"{where} has model {manifest.model_id} at {weights_dir}, the node serves {spec.model_id}; "
            "install the node's weights there (`ct2pet-node weights import`) and restart the node"
        )
    if package_version != spec.package_version:
        return (
            f"{where} runs ct2pet-node {package_version}, the node {spec.package_version}; "
            "install the node's version on every Ray worker"
        )
    if manifest_sha256 != spec.manifest_sha256:
        return (
            f"{where} has a manifest at {weights_dir} whose sha256 {manifest_sha256[:12]} differs from "
            f"the node's {spec.manifest_sha256[:12]}; copy the node's weights directory there"
        )
    return None


class ChunkActor:
    """One actor: verifies its weights, loads the pipeline once, then translates chunks on request.

    A refusal does not raise from ``__init__`` (Ray would hide the message
    in an actor-death error); :meth:`describe` reports it and the driver
    refuses the cluster with it.
    """

    def __init__(self, spec: ActorSpec) -> None:
        self.refusal = identity_problem(spec)
        self.pipeline: Any = None
        if self.refusal is None:
            from ct2pet_node.engine import load_pipeline

            # load_pipeline checks every weights file against the manifest's sha256 before use.
            self.pipeline = load_pipeline(spec.weights_dir, device=spec.device, options=spec.options)

    def describe(self) -> dict[str, Any]:
        """Host, process, device and model of this actor, or the reason it refuses to serve."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(self.pipeline.device) if self.pipeline is not None else None,
            "model_id": self.pipeline.model_id if self.pipeline is not None else None,
            "refusal": self.refusal,
        }

    def translate(
        self,
        region_hu: np.ndarray,
        kvp: float | None,
        steps: int | None,
        eta: float | None,
        seed: int | None,
        first_slice_index: int,
    ) -> np.ndarray:
        """(N, H, W) region in HU -> (N, S, S) PET; noise seeded by slice index from ``first_slice_index``."""
        if self.pipeline is None:
            raise RuntimeError(f"this actor refused to serve: {self.refusal}")
        values: np.ndarray = self.pipeline.translate_region(
            region_hu, kvp=kvp, steps=steps, eta=eta, seed=seed, first_slice_index=first_slice_index
        )
        return values
