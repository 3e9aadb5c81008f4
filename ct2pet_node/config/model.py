"""The typed values of the configuration: one frozen dataclass per TOML table, and their fixed choices.

Nothing here reads a file or checks a raw value; ``checks`` and the section
modules build these, ``load`` reads the TOML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ct2pet_node.config.dicomweb import DicomwebEndpoint, DicomwebListener
from ct2pet_node.config.engine_ray import RayConfig
from ct2pet_node.errors import ConfigError

# ct2pet_node/config/model.py -> the repository root, which holds config/ and weights/.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
WEIGHTS_ROOT = PROJECT_ROOT / "weights"
OUTPUT_KINDS = ("secondary-capture", "pet")
# The engine's choices are declared here, once, and imported by ct2pet_node/engine/options.py:
# config imports nothing of the engine, so torch can never reach it that way.
# "auto": as device, CUDA when present; as a fast-path value, the device's default (None).
AUTO = "auto"
# [node] other_sop_classes: storage SOP classes other than CT are acknowledged and dropped, or refused.
OTHER_SOP_CLASS_POLICIES = ("accept", "refuse")
PRECISIONS = ("float32", "tf32", "bfloat16", "float16")
# Offered on CUDA only; bfloat16 autocast is offered on CPUs too (engine/options.py).
CUDA_ONLY_PRECISIONS = ("tf32", "float16")
# Fast-path switches of [engine]: absent or "auto" leaves the choice to the device's default
# (ct2pet_node/engine/options.py), so a config moved between a GPU and a CPU host stays right.
ENGINE_SWITCHES = ("channels_last", "compile", "cuda_graphs", "overlap")
ENGINE_COUNTS = ("batch_size", "decode_batch_size", "threads")
# How a [[destinations]] or [[sources]] peer is spoken to: DIMSE (the default) or DICOMweb.
PEER_TYPES = ("dimse", "dicomweb")
# How a DIMSE source hands a study over: C-MOVE to the node's own SCP, or C-GET on the query's association.
RETRIEVE_METHODS = ("c-move", "c-get")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Who and where the node is, and how its DICOM listener treats what it is sent.

    Attributes
    ----------
    network_timeout_seconds : float
        The longest an association may stay silent, and a socket read may block.
    max_associations : int
        Associations at once (counted from their A-ASSOCIATE-RQ); more are
        rejected, transient.
    association_request_timeout_seconds : float
        How long a new connection may take (TLS handshake included) to send
        its A-ASSOCIATE-RQ before it is closed (DICOM's ARTIM timer).
    max_waiting_connections : int
        Connections that have not yet sent their A-ASSOCIATE-RQ held at
        once; the oldest is closed to make room for a new one.
    other_sop_classes : str
        One of :data:`OTHER_SOP_CLASS_POLICIES`: "accept" acknowledges storage
        SOP classes other than CT with success and keeps nothing of them;
        "refuse" refuses them at association negotiation.
    """

    ae_title: str
    host: str
    port: int
    data_dir: Path
    min_free_mb: int
    network_timeout_seconds: float
    other_sop_classes: str = "accept"
    max_associations: int = 10
    association_request_timeout_seconds: float = 5.0
    max_waiting_connections: int = 64


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may talk to the node, over what, and how much one instance may weigh.

    Attributes
    ----------
    allowed_calling_ae_titles : tuple of str
        Empty: any calling AE title may store.
    tls_certificate, tls_private_key : Path or None
        PEM server certificate (chain) and its key; set both to make the
        DICOM port speak TLS only (no plain TCP fallback on that port).
    tls_ca_certificates : Path or None
        PEM bundle of the CAs whose client certificates are trusted.
    require_client_certificate : bool
        Refuse a TLS client that shows no certificate signed by those CAs.
    max_instance_mb : int
        Largest data set one C-STORE may carry, MiB; a larger one is
        discarded as it arrives and answered 0xA701.
    max_associations_per_peer : int
        Associations one peer address may hold at once, so one host cannot
        take every one of ``[node] max_associations``.
    """

    allowed_calling_ae_titles: tuple[str, ...]
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_certificates: Path | None = None
    require_client_certificate: bool = False
    max_instance_mb: int = 512
    max_associations_per_peer: int = 8

    @property
    def tls_enabled(self) -> bool:
        return self.tls_certificate is not None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    series_quiet_seconds: float
    min_slices: int
    max_gantry_tilt_degrees: float
    slice_spacing_tolerance_mm: float
    # Defaulted so code that builds routing rules for qualification alone need not name it.
    settle_after_release_seconds: float = 3.0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The ``[engine]`` table; ``None`` leaves a choice to the model (steps, eta) or the device (fast paths)."""

    weights: str
    device: str
    steps: int
    precision: str
    eta: float | None
    seed: int
    channels_last: bool | None = None
    compile: bool | None = None
    cuda_graphs: bool | None = None
    overlap: bool | None = None
    batch_size: int | None = None
    decode_batch_size: int | None = None
    threads: int | None = None
    # "local" runs the pipeline in this process; "ray" on the actors of ``ray`` (config/engine_ray.py).
    backend: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def weights_dir(self) -> Path:
        """The weights directory: a bare name under ``weights/``, or a path (with a ``/``)."""
        # A bare name is one of the models shipped in weights/; anything with a slash is a path.
        if "/" not in self.weights:
            return WEIGHTS_ROOT / self.weights
        return Path(self.weights).expanduser()


@dataclass(frozen=True, slots=True)
class OutputConfig:
    series: tuple[str, ...]
    grid: str


@dataclass(frozen=True, slots=True)
class Destination:
    """One ``[[destinations]]`` table: a DIMSE peer (AE title, host, port) or a DICOMweb endpoint."""

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    type: str = "dimse"
    dicomweb: DicomwebEndpoint | None = None

    @property
    def address(self) -> str:
        """Where it is, for people: ``AE@host:port``, or the service URL without credentials."""
        if self.dicomweb is not None:
            return self.dicomweb.public_url
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Source:
    """One ``[[sources]]`` table: a PACS the node pulls studies from on demand (``ct2pet-node fetch``).

    Attributes
    ----------
    retrieve : str
        One of :data:`RETRIEVE_METHODS`, for a DIMSE source.
    dicomweb : DicomwebEndpoint or None
        Set for a DICOMweb source (QIDO-RS to find, WADO-RS to retrieve).
    """

    name: str
    type: str = "dimse"
    ae_title: str = ""
    host: str = ""
    port: int = 0
    retrieve: str = "c-move"
    dicomweb: DicomwebEndpoint | None = None


# About 24 hours of trying before a dead letter; routing.delivery.DEFAULT_SCHEDULE is made of them.
DEFAULT_RETRY_DELAYS_SECONDS: tuple[float, ...] = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
DEFAULT_MAX_ATTEMPTS = 31


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """How the sender retries and how long it waits for a destination.

    Attributes
    ----------
    retry_delays_seconds : tuple of float
        Delay after the 1st, 2nd, ... failed attempt, seconds; the last repeats.
    max_attempts : int
        Attempts before a delivery is dead-lettered (``jobs retry`` replays it).
    connect_timeout_seconds, acse_timeout_seconds, dimse_timeout_seconds : float or None
        Seconds to wait for the TCP connection, the association answer and a
        C-STORE response; None takes ``[node] network_timeout_seconds``. For a
        DICOMweb destination, the connection and the answer to each STOW-RS
        request (``dimse_timeout_seconds``).
    stow_batch_instances, stow_batch_mb : int
        A STOW-RS request to a DICOMweb destination carries at most this many
        instances and, unless one instance is larger, this many MiB.
    """

    retry_delays_seconds: tuple[float, ...] = DEFAULT_RETRY_DELAYS_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout_seconds: float | None = None
    acse_timeout_seconds: float | None = None
    dimse_timeout_seconds: float | None = None
    stow_batch_instances: int = 50
    stow_batch_mb: int = 64


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """``[retention]``: how long finished jobs' files stay, and when ``status`` warns of disk space.

    Attributes
    ----------
    spool_days, results_days, refused_days : float or None
        Days after the job finished (None: forever; 0: as soon as allowed).
        See :mod:`ct2pet_node.routing.retention` for the rules.
    interval_minutes : float
        How often the running node applies them (and once at start).
    warn_free_mb : int
        ``status`` warns below this much free space in ``data_dir``, MiB.
    """

    spool_days: float | None = 7.0
    results_days: float | None = 30.0
    refused_days: float | None = 7.0
    interval_minutes: float = 60.0
    warn_free_mb: int = 10_240


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen_host: str
    listen_port: int
    token: str


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeConfig
    security: SecurityConfig
    routing: RoutingConfig
    engine: EngineConfig
    output: OutputConfig
    destinations: tuple[Destination, ...]
    admin: AdminConfig
    source: Path | None
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    sources: tuple[Source, ...] = ()
    dicomweb: DicomwebListener = field(default_factory=DicomwebListener)

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError([f"[[destinations]]: no destination named {name!r} (known: {known})"])

    def source_named(self, name: str) -> Source:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none configured"
        raise ConfigError([f"[[sources]]: no source named {name!r} (known: {known})"])
