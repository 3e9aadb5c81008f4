"""TRAIN.toml -> frozen training settings, with every problem reported at once.

The file has a top level (``seed``, ``device``, ``checkpoint_every``,
``model_id_prefix``) and one table per concern: ``[data]`` (+
``[data.holdout]``), ``[vqgan]`` (+ ``[vqgan.ddconfig]``, the release's
names), ``[segmentation]``, ``[bridge]`` (+ ``[bridge.unet]``, the release's
``UNetParams`` names, and ``[bridge.schedule]``, the release's ``BB.params``
names). ``config/train-demo.toml`` is a complete, commented example.

Attention-map target: a pixel is "hot" when its real PET is at least
``data.hot_suv_threshold`` SUVbw (default 2.5, the customary cut between
background and metabolically active tissue in FDG PET). The release
instead thresholds each slice at 100/255 of its own maximum, which has no
absolute meaning; we learn SUV, so the threshold is in SUV too.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from ct2pet_node.errors import ConfigError, Ct2PetError

PET_KINDS = ("linear", "log1p")
ENCODERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_TOP_KEYS = {
    "seed",
    "device",
    "checkpoint_every",
    "model_id_prefix",
    "lr_final_fraction",
    "data",
    "vqgan",
    "segmentation",
    "bridge",
}


@dataclass(frozen=True, slots=True)
class HoldoutConfig:
    """A contiguous block of slices training never sees, plus a margin either side.

    ``first`` and ``stop`` are slice indices (sorted by position, Python
    half-open ``[first, stop)``) of ``study`` (a CT series UID; empty: the
    dataset's first study). ``stop == first`` means no hold-out.
    """

    study: str
    first: int
    stop: int
    margin: int

    @property
    def excluded(self) -> range:
        """Slice indices kept out of training: the block and its margins."""
        if self.stop <= self.first:
            return range(0)
        return range(max(0, self.first - self.margin), self.stop + self.margin)


@dataclass(frozen=True, slots=True)
class DataConfig:
    image_size: int
    pet_normalisation: Literal["linear", "log1p"]
    pet_scale_suv: float
    hot_suv_threshold: float
    attenuation_kvp: float
    holdout: HoldoutConfig


@dataclass(frozen=True, slots=True)
class VqganConfig:
    ddconfig: Mapping[str, Any]
    embed_dim: int
    n_embed: int
    steps: int
    batch_size: int
    lr: float
    commitment_beta: float
    dead_code_every: int
    crop_size: int


@dataclass(frozen=True, slots=True)
class SegmentationConfig:
    encoder: str
    depth: int
    decoder_channels: tuple[int, ...]
    steps: int
    batch_size: int
    lr: float

    def spec(self) -> dict[str, Any]:
        """The smp-style constructor written into the weights manifest."""
        return {
            "arch": "Unet",
            "in_channels": 1,
            "classes": 1,
            "encoder_name": self.encoder,
            "encoder_depth": self.depth,
            "decoder_channels": list(self.decoder_channels),
        }


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    unet: Mapping[str, Any]
    schedule: Mapping[str, Any]
    steps: int
    batch_size: int
    lr: float
    ema_decay: float
    ema_start: int


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything ``ct2pet-node train`` needs besides the data and output folders."""

    seed: int
    device: str
    checkpoint_every: int
    model_id_prefix: str
    lr_final_fraction: float
    data: DataConfig
    vqgan: VqganConfig
    segmentation: SegmentationConfig
    bridge: BridgeConfig
    source: Mapping[str, Any]


class _Reader:
    """Typed getters that record a problem instead of raising, so all are reported together."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def table(self, parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, Mapping):
            self.problems.append(f"{where}{key} must be a table, got {value!r}")
            return {}
        return value

    def num(
        self,
        table: Mapping[str, Any],
        key: str,
        where: str,
        default: Any,
        kind: type,
        low: float | None = None,
    ) -> Any:
        value = table.get(key, default)
        if value is None:
            self.problems.append(f"{where}{key} is required")
            return kind(0)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and not isinstance(value, int))
        ):
            self.problems.append(
                f"{where}{key} = {value!r} must be a{'n integer' if kind is int else ' number'}"
            )
            return kind(0)
        if low is not None and value < low:
            self.problems.append(f"{where}{key} = {value!r} must be at least {low}")
        return kind(value)

    def text(
        self, table: Mapping[str, Any], key: str, where: str, default: str, choices: tuple[str, ...] = ()
    ) -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            self.problems.append(f"{where}{key} = {value!r} must be a string")
            return default
        if choices and value not in choices:
            self.problems.append(f"{where}{key} = {value!r} must be one of {', '.join(choices)}")
        return value

    def ints(self, table: Mapping[str, Any], key: str, where: str, default: list[int]) -> tuple[int, ...]:
        value = table.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value):
            self.problems.append(f"{where}{key} = {value!r} must be a list of positive integers")
            return tuple(default)
        return tuple(value)


def _data(r: _Reader, top: Mapping[str, Any]) -> DataConfig:
    d = r.table(top, "data", "")
    h = r.table(d, "holdout", "data.")
    size = r.num(d, "image_size", "data.", 128, int, 16)
    if size % 16:
        r.problems.append(
            f"data.image_size = {size} must be a multiple of 16 (the networks halve it 4 times)"
        )
    slices = r.text(h, "slices", "data.holdout.", "")
    first = stop = 0
    if slices:
        try:
            a, b = slices.split(":")
            first, stop = int(a), int(b)
            if first < 0 or stop <= first:
                raise ValueError
        except ValueError:
            r.problems.append(f"data.holdout.slices = {slices!r} must be 'A:B' with 0 <= A < B (B excluded)")
            first = stop = 0
    kind = r.text(d, "pet_normalisation", "data.", "log1p", PET_KINDS)
    return DataConfig(
        image_size=size,
        pet_normalisation=cast(Literal["linear", "log1p"], kind),
        pet_scale_suv=r.num(d, "pet_scale_suv", "data.", 20.0, float, 0.5),
        hot_suv_threshold=r.num(d, "hot_suv_threshold", "data.", 2.5, float, 0.0),
        attenuation_kvp=r.num(d, "attenuation_kvp", "data.", 140.0, float, 1.0),
        holdout=HoldoutConfig(
            study=r.text(h, "study", "data.holdout.", ""),
            first=first,
            stop=stop,
            margin=r.num(h, "margin", "data.holdout.", 5, int, 0),
        ),
    )


def _vqgan(r: _Reader, top: Mapping[str, Any], image_size: int) -> VqganConfig:
    v = r.table(top, "vqgan", "")
    dd = dict(r.table(v, "ddconfig", "vqgan."))
    ch = r.num(dd, "ch", "vqgan.ddconfig.", 32, int, 32)
    if ch % 32:
        r.problems.append(f"vqgan.ddconfig.ch = {ch} must be a multiple of 32 (GroupNorm uses 32 groups)")
    z = r.num(dd, "z_channels", "vqgan.ddconfig.", 3, int, 1)
    ddconfig = {
        "ch": ch,
        "ch_mult": list(r.ints(dd, "ch_mult", "vqgan.ddconfig.", [1, 2, 4])),
        "num_res_blocks": r.num(dd, "num_res_blocks", "vqgan.ddconfig.", 1, int, 1),
        "attn_resolutions": list(dd.get("attn_resolutions", [])),
        "dropout": r.num(dd, "dropout", "vqgan.ddconfig.", 0.0, float, 0.0),
        "in_channels": 1,
        "out_ch": 1,
        "resolution": image_size,
        "z_channels": z,
        "double_z": False,
    }
    embed_dim = r.num(v, "embed_dim", "vqgan.", 3, int, 1)
    return VqganConfig(
        ddconfig=ddconfig,
        embed_dim=embed_dim,
        n_embed=r.num(v, "n_embed", "vqgan.", 512, int, 2),
        steps=r.num(v, "steps", "vqgan.", 1000, int, 1),
        batch_size=r.num(v, "batch_size", "vqgan.", 8, int, 1),
        lr=r.num(v, "lr", "vqgan.", 4.5e-4, float, 0.0),
        commitment_beta=r.num(v, "commitment_beta", "vqgan.", 0.25, float, 0.0),
        dead_code_every=r.num(v, "dead_code_every", "vqgan.", 100, int, 0),
        crop_size=min(r.num(v, "crop_size", "vqgan.", image_size, int, 16), image_size),
    )


def _segmentation(r: _Reader, top: Mapping[str, Any]) -> SegmentationConfig:
    s = r.table(top, "segmentation", "")
    depth = r.num(s, "depth", "segmentation.", 3, int, 1)
    if depth > 5:
        r.problems.append(f"segmentation.depth = {depth} must be at most 5")
    channels = r.ints(s, "decoder_channels", "segmentation.", [64, 32, 16])
    if len(channels) != depth:
        r.problems.append(
            f"segmentation.decoder_channels has {len(channels)} entries but depth is {depth}; "
            "give one per level"
        )
    return SegmentationConfig(
        encoder=r.text(s, "encoder", "segmentation.", "resnet18", tuple(ENCODERS)),
        depth=depth,
        decoder_channels=channels,
        steps=r.num(s, "steps", "segmentation.", 300, int, 1),
        batch_size=r.num(s, "batch_size", "segmentation.", 8, int, 1),
        lr=r.num(s, "lr", "segmentation.", 1e-3, float, 0.0),
    )


def _bridge(r: _Reader, top: Mapping[str, Any], latent_channels: int, latent_size: int) -> BridgeConfig:
    b = r.table(top, "bridge", "")
    unet = dict(r.table(b, "unet", "bridge."))
    unet.setdefault("model_channels", 64)
    unet.setdefault("channel_mult", [1, 2, 2])
    unet.setdefault("num_res_blocks", 1)
    unet.setdefault("attention_resolutions", [4])
    unet.setdefault("num_head_channels", 32)
    unet.setdefault("use_scale_shift_norm", True)
    unet.setdefault("resblock_updown", True)
    # The bridge runs on [noisy latent, attention context, attenuation context], each latent-shaped.
    unet.update(
        {
            "in_channels": 3 * latent_channels,
            "out_channels": latent_channels,
            "image_size": latent_size,
            "condition_key": "SpatialRescaler",
            "dims": 2,
            "use_spatial_transformer": False,
            "context_dim": None,
        }
    )
    channels = unet["model_channels"]
    if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0 or channels % 32:
        r.problems.append(f"bridge.unet.model_channels = {unet['model_channels']!r} must be a multiple of 32")
    schedule = dict(r.table(b, "schedule", "bridge."))
    schedule.setdefault("num_timesteps", 1000)
    schedule.setdefault("mt_type", "linear")
    schedule.setdefault("max_var", 1.0)
    schedule.setdefault("objective", "grad")
    schedule.setdefault("eta", 0.0)
    schedule.setdefault("skip_sample", True)
    schedule.setdefault("sample_type", "linear")
    schedule.setdefault("sample_step", 50)
    try:
        from ct2pet_node.engine.bridge import BridgeSchedule

        BridgeSchedule.from_config(schedule)
    except (Ct2PetError, TypeError, ValueError) as exc:
        r.problems.append(f"bridge.schedule: {exc}")
    return BridgeConfig(
        unet=unet,
        schedule=schedule,
        steps=r.num(b, "steps", "bridge.", 2000, int, 1),
        batch_size=r.num(b, "batch_size", "bridge.", 8, int, 1),
        lr=r.num(b, "lr", "bridge.", 1e-4, float, 0.0),
        ema_decay=r.num(b, "ema_decay", "bridge.", 0.995, float, 0.0),
        ema_start=r.num(b, "ema_start", "bridge.", 0, int, 0),
    )


def parse_train_config(data: Mapping[str, Any]) -> TrainConfig:
    """Check a parsed TRAIN.toml as a whole.

    Raises
    ------
    ConfigError
        Listing every problem found, each naming its key and what is expected.
    """
    problems: list[str] = []
    r = _Reader(problems)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown top-level keys {unknown}; expected {sorted(_TOP_KEYS)}")
    data_cfg = _data(r, data)
    vqgan = _vqgan(r, data, data_cfg.image_size)
    factor = 2 ** (len(vqgan.ddconfig["ch_mult"]) - 1)
    if data_cfg.image_size % factor:
        problems.append(
            f"data.image_size {data_cfg.image_size} is not divisible by the VQGAN factor {factor}"
        )
    latent = data_cfg.image_size // factor
    bridge = _bridge(r, data, vqgan.embed_dim, latent)
    unet_factor = 2 ** (len(bridge.unet.get("channel_mult", [1])) - 1)
    if latent % unet_factor:
        problems.append(
            f"latent size {latent} is not divisible by 2**(len(bridge.unet.channel_mult) - 1) = {unet_factor}"
        )
    segmentation = _segmentation(r, data)
    if data_cfg.image_size % 2**segmentation.depth:
        problems.append(
            f"data.image_size {data_cfg.image_size} is not divisible by 2**segmentation.depth "
            f"= {2**segmentation.depth}"
        )
    config = TrainConfig(
        seed=r.num(data, "seed", "", 0, int, 0),
        device=r.text(data, "device", "", "auto"),
        checkpoint_every=r.num(data, "checkpoint_every", "", 200, int, 1),
        model_id_prefix=r.text(data, "model_id_prefix", "", "ct2pet-trained"),
        lr_final_fraction=r.num(data, "lr_final_fraction", "", 0.1, float, 0.0),
        data=data_cfg,
        vqgan=vqgan,
        segmentation=segmentation,
        bridge=bridge,
        source=dict(data),
    )
    if config.lr_final_fraction > 1.0:
        problems.append(f"lr_final_fraction = {config.lr_final_fraction} must be within 0..1")
    if config.device != "auto" and not config.device.startswith(("cpu", "cuda")):
        problems.append(f"device = {config.device!r} must be auto, cpu, cuda or cuda:N")
    if problems:
        raise ConfigError(problems)
    return config


def load_train_config(path: Path) -> TrainConfig:
    """Read and check a TRAIN.toml file; see :func:`parse_train_config`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError([f"training config {path} does not exist; pass --config with a TOML file"]) from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"training config {path} is not readable TOML: {exc}"]) from exc
    return parse_train_config(data)
