"""Which fast paths the engine takes, and the pure rules that settle them for a device.

Every fast path is a switch in :class:`EngineOptions`; ``None`` means "the
device's default", which :func:`resolve_options` settles into a
:class:`ResolvedOptions` of concrete values. A fast path is on by default only
where it was measured to stay within :data:`ERROR_BUDGET` of the exact float32
path on that kind of device (README, "Performance"). The rules here take values
and return values: the free memory and the device kind are passed in, so the
choice is testable without a GPU. torch is not imported.

The choices themselves (precisions, switch and count names) are the
configuration's (:mod:`ct2pet_node.config.model`), declared there once;
:meth:`EngineOptions.from_config` is the one mapping from ``[engine]`` to here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from ct2pet_node.config import (
    CUDA_ONLY_PRECISIONS,
    ENGINE_COUNTS,
    ENGINE_SWITCHES,
    PRECISIONS,
    EngineConfig,
)
from ct2pet_node.errors import EngineError

log = structlog.get_logger(__name__)

# Largest batch the engine runs at once; beyond it nothing is gained and a chunk of the
# worker (16 slices) is split anyway.
MAX_BATCH = 64
# CPU slices per batch for the release architecture (64x64 latent): on the 2-core machine
# batch 2 was as fast per slice as 4 (UNet 0.24 vs 0.31 s/slice/step unloaded) with 0.7 GiB
# less peak RSS (README "Performance").
CPU_BATCH = 2
# Smaller latents leave the cores waiting between small convolutions, so the CPU batch grows to
# keep batch x latent pixels near the release's: the demo model (32x32 latent) gets 8, measured
# 1.43x faster per study than batch 2 with its decode batched alike (README "Performance").
CPU_LATENT_PIXELS_PER_BATCH = CPU_BATCH * 64 * 64
CPU_MAX_BATCH = 16


@dataclass(frozen=True, slots=True)
class ErrorBudget:
    """How far a fast path may move the output from the exact float32 path (same noise).

    Parameters
    ----------
    max_mae_fraction : float
        Largest mean absolute error, as a fraction of the output range (the
        PET scaling's ``scale``; 1.0 for the release's relative units).
    min_psnr_db : float
        Smallest peak signal-to-noise ratio, dB, with the output range as peak.
    """

    max_mae_fraction: float = 0.01
    min_psnr_db: float = 40.0

    def admits(self, mae_fraction: float, psnr_db: float) -> bool:
        """Whether a measured (MAE / range, PSNR in dB) pair is within the budget."""
        return mae_fraction <= self.max_mae_fraction and psnr_db >= self.min_psnr_db


ERROR_BUDGET = ErrorBudget()


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Fast-path switches of the pipeline; ``None`` = the device's default (see module docstring).

    Parameters
    ----------
    precision : str
        ``float32`` (exact; on CUDA TF32 is switched off), ``tf32`` (CUDA: TF32
        convolutions and matmuls), ``bfloat16`` (autocast, CUDA or CPU) or
        ``float16`` (CUDA autocast); GroupNorm and the codebook search stay float32.
    channels_last : bool, optional
        Networks and activations in NHWC memory format.
    compile : bool, optional
        ``torch.compile`` the UNet and the VQGAN; falls back to eager with a
        logged warning when compilation is unavailable or fails.
    cuda_graphs : bool, optional
        CUDA: capture the UNet of the fixed-shape sampling loop once per batch
        shape and replay it (with ``compile``: compile's ``reduce-overhead`` mode).
    batch_size : int, optional
        Slices sampled together; ``None`` chooses from free memory on CUDA.
    decode_batch_size : int, optional
        Slices the VQGAN encodes and decodes together (its activations are 16
        times the UNet's per slice); ``None`` chooses from free memory on CUDA.
    overlap : bool, optional
        Prepare the next batch and finish the previous one on a helper thread
        while the device samples the current one.
    threads : int, optional
        CPU intra-op threads (``torch.set_num_threads``); ``None`` leaves torch's choice.
    """

    precision: str = "float32"
    channels_last: bool | None = None
    compile: bool | None = None
    cuda_graphs: bool | None = None
    batch_size: int | None = None
    decode_batch_size: int | None = None
    overlap: bool | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ENGINE_COUNTS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                problems.append(f"{name} {value!r} must be a whole number >= 1 or None (automatic)")
        if problems:
            raise EngineError("unusable engine options: " + "; ".join(problems))

    @classmethod
    def from_config(cls, engine: EngineConfig) -> EngineOptions:
        """The fast paths an ``[engine]`` table asks for; what it leaves to ``"auto"`` stays None."""
        # By name: every switch and count of [engine] is a field here of the same name and meaning.
        chosen = {name: getattr(engine, name) for name in (*ENGINE_SWITCHES, *ENGINE_COUNTS)}
        return cls(precision=engine.precision, **chosen)


@dataclass(frozen=True, slots=True)
class ResolvedOptions:
    """:class:`EngineOptions` with every choice made for one device (batch sizes may stay None)."""

    precision: str
    channels_last: bool
    compile: bool
    cuda_graphs: bool
    batch_size: int | None
    decode_batch_size: int | None
    overlap: bool
    threads: int | None

    @property
    def fixed_shapes(self) -> bool:
        """Whether batches are padded to one shape (compiled code and graphs are shape-specialised)."""
        return self.compile or self.cuda_graphs

    @property
    def exact(self) -> bool:
        """Whether the output is the exact float32 path's (paths that only reorder work)."""
        return self.precision == "float32" and not self.channels_last and not self.compile


# Defaults per device kind, from the measurements in README "Performance".
# CPU: channels_last was bit-identical but not measurably faster on the 2-core machine;
# torch.compile took over 3 minutes per batch shape for at most ~15 % on the UNet; bfloat16
# autocast (AMX) is 2-5x faster but missed the PSNR budget (37 dB): all off. Overlap gains
# nothing when the CPU is the device.
# CUDA: the paths that do not change the arithmetic (CUDA graphs replay the same kernels,
# overlap only moves host work) are on; those that change rounding (16-bit autocast, TF32,
# channels_last's other kernels, compile's fusions) stay off until a GPU session has
# measured them within ERROR_BUDGET.
_DEFAULTS = {
    "cpu": {"channels_last": False, "compile": False, "cuda_graphs": False, "overlap": False},
    "cuda": {"channels_last": False, "compile": False, "cuda_graphs": True, "overlap": True},
}


def resolve_options(options: EngineOptions, device_type: str) -> ResolvedOptions:
    """Settle every ``None`` of ``options`` for a device kind (``"cpu"`` or ``"cuda"``).

    Raises
    ------
    EngineError
        float16 or tf32 asked for on the CPU (CUDA paths). bfloat16 autocast is
        offered on the CPU (fast where the CPU has AMX or AVX512-BF16), never
        as a default.

    Notes
    -----
    CUDA graphs asked for on the CPU are switched off with a logged warning:
    they do not change the output, so refusing would only stop a node whose
    configuration moved to a machine without a GPU.
    """
    if device_type not in _DEFAULTS:
        raise EngineError(f"device type {device_type!r} has no engine defaults; use cpu or cuda")
    if options.precision in CUDA_ONLY_PRECISIONS and device_type != "cuda":
        raise EngineError(
            f"precision {options.precision} is only offered on CUDA; use float32 or bfloat16 on {device_type}"
        )
    defaults = _DEFAULTS[device_type]

    def pick(name: str) -> bool:
        value = getattr(options, name)
        return bool(defaults[name] if value is None else value)

    cuda_graphs = pick("cuda_graphs")
    if cuda_graphs and device_type != "cuda":
        log.warning("fast_path_unavailable", path="cuda_graphs", device=device_type, using="eager")
        cuda_graphs = False
    return ResolvedOptions(
        precision=options.precision,
        channels_last=pick("channels_last"),
        compile=pick("compile"),
        cuda_graphs=cuda_graphs,
        batch_size=options.batch_size,
        decode_batch_size=options.decode_batch_size,
        overlap=pick("overlap"),
        threads=options.threads,
    )


@dataclass(frozen=True, slots=True)
class Footprint:
    """Device memory one slice costs in each phase, bytes (measured or estimated)."""

    sample_bytes: float
    decode_bytes: float


def estimate_footprint(
    image_size: int, unet_channels: int, vqgan_channels: int, bytes_per_value: int
) -> Footprint:
    """A rough per-slice footprint from the architecture, used before any measurement.

    The UNet holds its skip activations (about 12 tensors of the latent grid,
    up to 4x its model channels); the VQGAN at full resolution holds a few
    activations of its base channels at a time (GroupNorm's float32 copy, the
    SiLU, the conv output, the residual). Both with a factor 2 of slack.
    """
    latent = (image_size // 4) ** 2
    sample = 2 * 24 * latent * unet_channels * bytes_per_value
    decode = 2 * 6 * image_size**2 * vqgan_channels * max(bytes_per_value, 4)
    return Footprint(float(sample), float(decode))


def latent_side(architecture: Mapping[str, Any]) -> int:
    """Side in pixels of a model's square latent: the VQGAN halves the image once per level but the last."""
    levels = len(architecture["vqgan"]["ddconfig"]["ch_mult"])
    return int(architecture["image_size"]) // (1 << (levels - 1))


def cpu_batch_size(latent_side: int) -> int:
    """Slices per CPU batch (sampling and decoding) for a model whose latent is ``latent_side`` square."""
    if latent_side < 1:
        raise EngineError(f"latent side {latent_side} must be at least 1 pixel")
    return max(1, min(CPU_MAX_BATCH, CPU_LATENT_PIXELS_PER_BATCH // latent_side**2))


def choose_batch_sizes(
    free_bytes: float, footprint: Footprint, *, usable_fraction: float = 0.6, cap: int = MAX_BATCH
) -> tuple[int, int]:
    """(sampling batch, decode batch) that fit ``usable_fraction`` of ``free_bytes``.

    Both at least 1 and at most ``cap``; the decode batch never exceeds the
    sampling batch (it decodes what one sampling batch produced).
    """
    usable = max(0.0, free_bytes * usable_fraction)
    sample = int(max(1, min(cap, usable // max(footprint.sample_bytes, 1.0))))
    decode = int(max(1, min(sample, usable // max(footprint.decode_bytes, 1.0))))
    return sample, decode


def settle_batch_sizes(
    options: ResolvedOptions,
    architecture: Mapping[str, Any],
    device_type: str,
    free_bytes: Callable[[], float],
) -> tuple[int, int]:
    """(sampling batch, decode batch) for a pipeline: the options' own, else chosen for the device.

    ``free_bytes`` is asked only on CUDA, and only when the options leave a size open.
    """
    chosen = options.batch_size, options.decode_batch_size
    if chosen[0] is not None and chosen[1] is not None:
        return chosen[0], chosen[1]
    if device_type == "cuda":
        width = 2 if options.precision in ("bfloat16", "float16") else 4
        footprint = estimate_footprint(
            int(architecture["image_size"]),
            int(architecture["unet"]["model_channels"]) * max(architecture["unet"].get("channel_mult", (1,))),
            int(architecture["vqgan"]["ddconfig"]["ch"]),
            width,
        )
        auto = choose_batch_sizes(free_bytes(), footprint)
    else:
        # Memory does not bind on a CPU host; decoding as wide as sampling keeps the cores fed.
        auto = (cpu_batch_size(latent_side(architecture)),) * 2
    sample = chosen[0] or auto[0]
    return sample, chosen[1] or min(auto[1], sample)
