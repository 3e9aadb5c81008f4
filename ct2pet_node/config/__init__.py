"""TOML configuration -> frozen, typed values, with every problem reported at once.

The embedded default (``config/ct2pet-node.toml``) is always read first; a
user file is merged over it (tables key by key, lists replaced whole), then
the result is checked as a whole so ``config check`` can list every problem
with its key and its fix instead of stopping at the first.

``model`` holds the dataclasses, ``checks`` the problem-collecting reader,
``node``, ``routing`` and ``engine`` one parser per table, ``load`` the
reading and merging. Import from here: this package's names are its API.
"""

from ct2pet_node.config.dicomweb import DicomwebEndpoint, DicomwebListener
from ct2pet_node.config.engine_ray import BACKENDS, RAY_FALLBACKS, RayConfig, with_ray_address
from ct2pet_node.config.load import DEFAULT_CONFIG_PATH, load_config, parse_config
from ct2pet_node.config.model import (
    AUTO,
    CUDA_ONLY_PRECISIONS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAYS_SECONDS,
    ENGINE_COUNTS,
    ENGINE_SWITCHES,
    OTHER_SOP_CLASS_POLICIES,
    OUTPUT_KINDS,
    PEER_TYPES,
    PRECISIONS,
    PROJECT_ROOT,
    RETRIEVE_METHODS,
    WEIGHTS_ROOT,
    AdminConfig,
    Config,
    DeliveryConfig,
    Destination,
    EngineConfig,
    NodeConfig,
    OutputConfig,
    RetentionConfig,
    RoutingConfig,
    SecurityConfig,
    Source,
)
from ct2pet_node.errors import ConfigError

__all__ = [
    "AUTO",
    "BACKENDS",
    "CUDA_ONLY_PRECISIONS",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RETRY_DELAYS_SECONDS",
    "ENGINE_COUNTS",
    "ENGINE_SWITCHES",
    "OTHER_SOP_CLASS_POLICIES",
    "OUTPUT_KINDS",
    "PEER_TYPES",
    "PRECISIONS",
    "PROJECT_ROOT",
    "RAY_FALLBACKS",
    "RETRIEVE_METHODS",
    "WEIGHTS_ROOT",
    "AdminConfig",
    "Config",
    "ConfigError",
    "DeliveryConfig",
    "Destination",
    "DicomwebEndpoint",
    "DicomwebListener",
    "EngineConfig",
    "NodeConfig",
    "OutputConfig",
    "RayConfig",
    "RetentionConfig",
    "RoutingConfig",
    "SecurityConfig",
    "Source",
    "load_config",
    "parse_config",
    "with_ray_address",
]
