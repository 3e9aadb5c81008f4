"""The five networks of a CPDM model as one typed value, built from an architecture and its weights.

Beside the network classes, not in the pipeline, so that the release import
and the pipeline both build networks without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar, get_type_hints

import torch
from torch import nn

from ct2pet_node.engine.networks.conditioner import SpatialRescaler
from ct2pet_node.engine.networks.segmentation import SegmentationUNet
from ct2pet_node.engine.networks.unet import UNet
from ct2pet_node.engine.networks.vqgan import VQGAN
from ct2pet_node.errors import Ct2PetError, EngineError, WeightsError

_Net = TypeVar("_Net", bound=nn.Module)


@dataclass(frozen=True, slots=True)
class Networks:
    """Every network one CPDM model runs, by role.

    Attributes
    ----------
    vqgan : VQGAN
        Encodes CT into the latent the bridge starts from; decodes the PET latent.
    unet : UNet
        The bridge's denoiser.
    cond_attention, cond_attenuation : SpatialRescaler
        Conditioners of the attention map and of the attenuation map.
    segmentation : SegmentationUNet
        Makes the attention map from the CT.

    Notes
    -----
    Frozen is the set of networks, not the modules: moving them to a device
    (:meth:`to`) or another memory format changes the modules in place.
    """

    vqgan: VQGAN
    unet: UNet
    cond_attention: SpatialRescaler
    cond_attenuation: SpatialRescaler
    segmentation: SegmentationUNet

    def __post_init__(self) -> None:
        # A network of the wrong kind (or a dict) would otherwise fail only at the first translation.
        kinds = get_type_hints(Networks)
        wrong = [
            f"{name} is a {type(getattr(self, name)).__name__}, not a {kind.__name__}"
            for name, kind in kinds.items()
            if not isinstance(getattr(self, name), kind)
        ]
        if wrong:
            raise EngineError("networks of the wrong kind: " + "; ".join(wrong))

    def named(self) -> Iterator[tuple[str, nn.Module]]:
        """(role, module) pairs in the order of the attributes (the weights files' network names)."""
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    def to(self, device: torch.device) -> Networks:
        """Move every network to ``device`` in place (as ``nn.Module.to`` does); returns ``self``."""
        for _, module in self.named():
            module.to(device)
        return self


def build_networks(
    architecture: Mapping[str, Any], state_dicts: Mapping[str, Mapping[str, torch.Tensor]], origin: str
) -> Networks:
    """Build every network the architecture names and load its weights strictly (CPU, eval mode).

    ``origin`` names where the weights came from, for the error messages.

    Raises
    ------
    WeightsError
        A network is missing, cannot be built from the architecture, or its
        weights do not fit it (missing, unexpected or misshapen keys).
    """
    cond = architecture["cond_stage"]
    missing = [f.name for f in fields(Networks) if f.name not in state_dicts]
    if missing:
        raise WeightsError(f"{origin} lacks the {missing} network weights; re-import or re-train")

    def load(name: str, make: Callable[[], _Net]) -> _Net:
        try:
            module = make()
            module.load_state_dict(dict(state_dicts[name]), strict=True)
        except (RuntimeError, ValueError, KeyError, TypeError, Ct2PetError) as exc:
            raise WeightsError(f"{origin}: the {name} weights do not fit its architecture: {exc}") from exc
        return module.eval().requires_grad_(False)

    def conditioner() -> SpatialRescaler:
        return SpatialRescaler(int(cond["n_stages"]), int(cond["in_channels"]), int(cond["out_channels"]))

    def segmentation() -> SegmentationUNet:
        # Its constructor is read from its weights' shapes, checked against the spec when there is one.
        shapes = {k: tuple(v.shape) for k, v in state_dicts["segmentation"].items()}
        return SegmentationUNet.from_state_dict_shapes(shapes, architecture.get("segmentation"))

    return Networks(
        vqgan=load("vqgan", lambda: VQGAN.from_config(architecture["vqgan"])),
        unet=load("unet", lambda: UNet.from_config(architecture["unet"])),
        cond_attention=load("cond_attention", conditioner),
        cond_attenuation=load("cond_attenuation", conditioner),
        segmentation=load("segmentation", segmentation),
    )
