"""CT slices in HU in, synthetic PET slices out: CPDM inference written out stage by stage.

Stages (the reference README's numbering): (1) CT scaled to [0, 1]; (2)
attention map from the segmentation U-Net; (3) attenuation map exp(-mu) at the
kVp policy's voltage; (4) both maps through their conditioners into the
context; (5) the VQGAN encodes the CT into y; (6-7) the Brownian bridge is
sampled from x = y towards the PET latent; the VQGAN decodes it; the result in
[-1, 1] is mapped to the manifest's output units. Arrays cross this module as
numpy (N, H, W) float32; tensors inside are (B, C, H, W).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Unpack

import numpy as np
import structlog
import torch
import torch.nn.functional as F

from ct2pet_node.domain.model_grid import plan_bare_slices
from ct2pet_node.domain.request import Progress, TranslationRequest
from ct2pet_node.engine.attenuation import AttenuationKvp, attenuation_map
from ct2pet_node.engine.bridge import BridgeSchedule
from ct2pet_node.engine.fast_paths import (
    autocast_for,
    cuda_free_bytes,
    cuda_math,
    network_calls,
)
from ct2pet_node.engine.manifest import WeightsManifest
from ct2pet_node.engine.networks import Networks
from ct2pet_node.engine.options import EngineOptions, latent_side, resolve_options, settle_batch_sizes
from ct2pet_node.engine.sampling import Generators, sample_bridge
from ct2pet_node.engine.translation import Translation
from ct2pet_node.errors import EngineError

log = structlog.get_logger(__name__)

__all__ = ["Pipeline"]


class Pipeline:
    """A loaded CPDM model on one device; call it with CT slices in HU.

    Attributes
    ----------
    manifest : WeightsManifest
    model_id, output_units : str
    device : torch.device
    schedule : BridgeSchedule
    image_size : int
        Square slice size the model works at, pixels.
    frame : ModelFrame
        Orientation and pixel size of the model's training slices.
    options : ResolvedOptions
        The fast paths taken (see :mod:`ct2pet_node.engine.options`).
    batch_size, decode_batch_size : int
        Slices sampled, and slices encoded or decoded, together; change them
        freely, results do not depend on them (beyond float32 rounding).
        Out of device memory, a translation lowers them through
        :meth:`lower_batch_size`.
    nets : Networks
        The networks, on ``device``.

    Notes
    -----
    The pipeline owns its networks: they are moved to the device, and
    converted to channels_last when that path is on, in place.
    """

    def __init__(
        self,
        manifest: WeightsManifest,
        networks: Networks,
        device: torch.device,
        precision: str | None = None,
        batch_size: int | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        options = options or EngineOptions()
        if precision is not None or batch_size is not None:
            options = replace(
                options, precision=precision or options.precision, batch_size=batch_size or options.batch_size
            )
        self.options = resolve_options(options, device.type)
        self.manifest = manifest
        self.model_id = manifest.model_id
        self.output_units = manifest.output_units
        self.device = device
        # None for the exact float32 path, as before the fast paths existed.
        self.precision = None if self.options.precision == "float32" else self.options.precision
        self.schedule = BridgeSchedule.from_config(manifest.architecture["bridge"])
        self.image_size = int(manifest.architecture["image_size"])
        self.frame = manifest.frame
        self.latent_side = latent_side(manifest.architecture)
        # Sampling steps when the caller names none: the model's own sample_step.
        self.default_steps = int(self.schedule.sample_step)
        self.default_eta = float(self.schedule.eta)
        self.kvp_policy = AttenuationKvp.from_dict(manifest.normalisation.get("attenuation_kvp", {}))
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        self.nets = networks.to(device)
        if self.options.channels_last:
            for net in (self.nets.unet, self.nets.vqgan, self.nets.segmentation):
                # torch's stubs lack Module.to's memory_format overload; it exists at run time.
                net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._unet_fn, self._encode_fn, self._decode_fn = network_calls(
            self.nets, self._autocast, self.options.compile, self.options.cuda_graphs
        )
        self.batch_size, self.decode_batch_size = self._batch_sizes()

    def lower_batch_size(self, batch_size: int) -> None:
        """Sample at most ``batch_size`` slices together from now on (and encode or decode no more).

        The lasting side of the out-of-memory back-off: the next call starts at
        the size that fitted, instead of running out of memory again first.
        """
        if batch_size < 1:
            raise EngineError(f"batch size {batch_size} must be at least 1 slice")
        before = self.batch_size
        self.batch_size = min(self.batch_size, int(batch_size))
        self.decode_batch_size = min(self.decode_batch_size, self.batch_size)
        if self.batch_size != before:
            log.info(
                "batch_size_lowered",
                device=str(self.device),
                batch_size=self.batch_size,
                decode_batch_size=self.decode_batch_size,
                was=before,
            )

    # --- fast-path plumbing ---------------------------------------------------------------------
    def _batch_sizes(self) -> tuple[int, int]:
        return settle_batch_sizes(
            self.options, self.manifest.architecture, self.device.type, lambda: cuda_free_bytes(self.device)
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast_for(self.device, self.options.precision, self.options.cuda_graphs)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    def _in_chunks(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn`` over ``x`` in decode-sized chunks (padded to one shape when shapes are fixed)."""
        # Never wider than a sampling batch: it decodes what one sampling batch produced.
        size = max(1, min(int(self.decode_batch_size), int(self.batch_size)))
        if x.shape[0] <= size and not (self.options.fixed_shapes and x.shape[0] < size):
            return fn(self._layout(x))
        parts = []
        for start in range(0, x.shape[0], size):
            part = x[start : start + size]
            count = part.shape[0]
            if self.options.fixed_shapes and count < size:
                part = torch.cat([part, part[-1:].expand(size - count, *part.shape[1:])])
            parts.append(fn(self._layout(part))[:count])
        return torch.cat(parts)

    # --- stages, tensors (B, C, H, W) on self.device -------------------------------------------
    def segmentation_logits(self, ct01: torch.Tensor) -> torch.Tensor:
        """Stage 2a: segmentation U-Net logits (B, 1, H, W) from CT in [0, 1], no ImageNet normalisation."""
        with self._autocast():
            out: torch.Tensor = self.nets.segmentation(self._layout(ct01)).float()
        return out.contiguous()

    def attention_map(self, ct01: torch.Tensor) -> torch.Tensor:
        """Stage 2: 1.0 where sigmoid(logits) >= 0.5 else 0.0, (B, 1, H, W)."""
        return (torch.sigmoid(self.segmentation_logits(ct01)) >= 0.5).to(torch.float32)

    def attenuation_map(self, ct01: torch.Tensor, kvp: float) -> torch.Tensor:
        """Stage 3: exp(-mu_511keV) at ``kvp`` from CT in [0, 1], (B, 1, H, W)."""
        mapped = attenuation_map(ct01.detach().float().cpu().numpy(), kvp)
        return torch.from_numpy(mapped).to(self.device)

    def context(self, attention: torch.Tensor, attenuation: torch.Tensor) -> torch.Tensor:
        """Stage 4: concat(cond_attention(attention), cond_attenuation(attenuation)) on channels."""
        return torch.cat(
            [self.nets.cond_attention(attention), self.nets.cond_attenuation(attenuation)], dim=1
        )

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Stage 5: VQGAN latent quant_conv(encoder(x)), unquantised, float32, in decode-sized chunks."""
        return self._in_chunks(self._encode_fn, image).contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> image in about [-1, 1] (nearest-codebook quantisation first), float32, unclamped."""
        return self._in_chunks(self._decode_fn, z).contiguous()

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction at x_t (B, C, h, w), timesteps t (B,), with the context concatenated."""
        return self._unet_fn(self._layout(torch.cat([x_t, context], dim=1)), t).contiguous()

    def sample_latent(
        self,
        y: torch.Tensor,
        context: torch.Tensor,
        steps: int | None = None,
        eta: float | None = None,
        generator: Generators = None,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Stages 6-7: run the bridge from x = y to the PET latent.

        Parameters
        ----------
        y, context : torch.Tensor
            CT latent (B, C, h, w) and context (B, 6, h, w).
        steps, eta : optional
            Sampling steps and noise scale; defaults from the schedule.
        generator : torch.Generator or sequence of them, optional
            One generator for the batch, or one per slice (noise drawn per slice on the CPU).
        progress : callable, optional
            Called with 1 after each network evaluation.
        """
        return sample_bridge(self.schedule, self.denoise, y, context, steps, eta, generator, progress)

    # --- numpy in, numpy out --------------------------------------------------------------------
    @staticmethod
    def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, C, H, W) resized edge to edge to ``size`` (bilinear; antialiased when shrinking)."""
        if tuple(images.shape[-2:]) == size:
            return images
        shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinking)

    def translate_ct01(
        self,
        ct01: torch.Tensor,
        kvp: float,
        steps: int | None,
        eta: float | None,
        generators: Sequence[torch.Generator] | None,
        progress: Callable[[int], None] | None = None,
        attenuation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One batch at model size: CT in [0, 1] (B, 1, S, S) -> PET in [-1, 1] (B, 1, S, S), unclamped.

        ``attenuation`` (B, 1, S, S), when given, is the stage-3 map already made from ``ct01``.
        A slice whose latent is not finite comes back all NaN, for the caller's check to refuse.
        """
        if attenuation is None:
            attenuation = self.attenuation_map(ct01, kvp)
        context = self.context(self.attention_map(ct01), attenuation)
        latent = self.sample_latent(self.encode(ct01), context, steps, eta, generators, progress)
        # The decode quantises to the nearest codebook entry, which turns a NaN latent into a
        # plausible image; torch.where keeps it on the device (no sync, shapes unchanged).
        broken = ~torch.isfinite(latent).flatten(1).all(dim=1)
        return torch.where(broken[:, None, None, None], torch.nan, self.decode(latent))

    def translate_region(
        self,
        region_hu: np.ndarray,
        kvp: float | None = None,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
        first_slice_index: int = 0,
        out_shape: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Translate the regions of CT slices that cover the model's field of view.

        Parameters
        ----------
        region_hu : numpy.ndarray
            (N, H, W) CT in Hounsfield units, already in the model's
            orientation and spanning its field of view
            (:meth:`~ct2pet_node.domain.model_grid.GridMapping.to_region`);
            resized here to the model's matrix, edge to edge.
        kvp : float, optional
            The CT's KVP tag; used only when the model's kVp policy is ``from_ct``.
        steps, eta : optional
            Sampling steps and noise scale (defaults from the weights).
        seed : int, optional
            Noise seed; the noise of slice i derives from (seed, i), so results
            do not depend on the batch size. Random when omitted.
        progress : callable, optional
            ``progress(done_units, total_units)``, one unit per slice per sampling step.
        first_slice_index : int
            Index of ``region_hu[0]`` in its whole volume: translating a volume
            in chunks with the right offsets gives exactly the noise, and so the
            output, of translating it at once (the engine worker's checkpoints
            rely on this).
        out_shape : tuple of int, optional
            Resize the result to (H, W) before the output units are applied;
            default: the model grid, (N, image_size, image_size).

        Returns
        -------
        numpy.ndarray
            float32 PET in ``self.output_units``.
        """
        hu = _slices(region_hu)
        run = Translation(
            pipe=self,
            ct01=self.manifest.ct_scaling.to_ct01(hu),
            kvp=self.kvp_policy.resolve(kvp),
            steps=steps,
            eta=eta,
            seed=secrets.randbits(63) if seed is None else int(seed),
            first_slice_index=first_slice_index,
            progress=progress,
            out_shape=out_shape,
        )
        log.info(
            "translation_started",
            slices=hu.shape[0],
            kvp=run.kvp,
            ct_header_kvp=kvp,
            kvp_rule=self.kvp_policy.describe(kvp),
            steps=steps,
            device=str(self.device),
        )
        with (
            torch.inference_mode(),
            cuda_math(self.device, self.options.precision, benchmark=not self.options.exact),
        ):
            return run.execute()

    def __call__(
        self,
        hu: np.ndarray,
        pixel_spacing: tuple[float, float] | None = None,
        **request: Unpack[TranslationRequest],
    ) -> np.ndarray:
        """Translate CT slices to synthetic PET on the slices' own grid.

        Parameters
        ----------
        hu : numpy.ndarray
            (N, H, W) CT in Hounsfield units, in the model's orientation.
        pixel_spacing : tuple of float, optional
            (row, column) spacing of ``hu`` in mm. Given, each slice is shown
            to the model at its training pixel size (padded with air or
            cropped around the centre, see
            :func:`~ct2pet_node.domain.model_grid.plan_bare_slices`); omitted,
            the whole slice is resized to the model's matrix, whatever its
            field of view.
        **request
            :class:`~ct2pet_node.domain.request.TranslationRequest`, passed on
            to :meth:`translate_region`.

        Returns
        -------
        numpy.ndarray
            (N, H, W) float32 PET in ``self.output_units``.
        """
        hu = _slices(hu)
        mapping = None if pixel_spacing is None else plan_bare_slices(hu, pixel_spacing, self.frame)
        region, out_shape = (
            (hu, hu.shape[1:]) if mapping is None else (mapping.to_region(hu), mapping.region_shape)
        )
        translated = self.translate_region(region, out_shape=(out_shape[0], out_shape[1]), **request)
        return translated if mapping is None else mapping.from_region(translated)


def _slices(hu: np.ndarray) -> np.ndarray:
    """``hu`` as an array of (N, H, W) slices, or a clear refusal."""
    array = np.asarray(hu)
    if array.ndim != 3 or array.shape[0] == 0:
        raise EngineError(f"CT array of shape {array.shape} is not (N, H, W) slices; pass a (z, y, x) volume")
    return array
