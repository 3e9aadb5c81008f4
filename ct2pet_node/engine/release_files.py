"""The CPDM authors' release files read without executing any of their code.

Checkpoints load with ``torch.load(weights_only=True)``; the YAML config with a
SafeLoader that understands ``!!python/tuple`` and refuses every other Python
tag. What comes out is plain data: a config dict, and state dicts of tensors.
Turning those into our networks' weights is :mod:`ct2pet_node.engine.release`'s.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import torch
import yaml

from ct2pet_node.errors import WeightsError

log = structlog.get_logger(__name__)

StateDict = dict[str, torch.Tensor]

_PYTHON_TAG_PREFIX = "tag:yaml.org,2002:python/"
_TUPLE_TAG = _PYTHON_TAG_PREFIX + "tuple"


class _RefusedTag(yaml.YAMLError):  # type: ignore[misc]
    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.tag = tag


class ReleaseConfigLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader plus ``!!python/tuple`` (read as a list); any other Python tag is refused."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> list[Any]:
    # A list, not a tuple: the config ends up in JSON, and the networks accept sequences.
    if not isinstance(node, yaml.SequenceNode):
        raise _RefusedTag(f"{node.tag} on a non-sequence")
    items: list[Any] = loader.construct_sequence(node, deep=True)
    return items


def _refuse_python_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    raise _RefusedTag(node.tag)


ReleaseConfigLoader.add_constructor(_TUPLE_TAG, _construct_tuple)
ReleaseConfigLoader.add_multi_constructor(_PYTHON_TAG_PREFIX, _refuse_python_tag)


def read_release_config(path: Path) -> dict[str, Any]:
    """Parse the release's YAML config safely.

    Raises
    ------
    WeightsError
        The file is missing, is not YAML, is not a mapping, or uses a tag other
        than ``!!python/tuple`` (the message names the file and the tag).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WeightsError(f"cannot read release config {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=ReleaseConfigLoader)  # a SafeLoader subclass
    except _RefusedTag as exc:
        raise WeightsError(
            f"release config {path} uses the YAML tag {exc.tag!r}; only !!python/tuple is accepted, "
            "because other Python tags would execute code: remove the tag or use the authors' file"
        ) from exc
    except yaml.YAMLError as exc:
        raise WeightsError(f"release config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"release config {path} is not a YAML mapping (got {type(data).__name__})")
    return data


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint with ``weights_only=True`` onto the CPU.

    Raises
    ------
    WeightsError
        Missing, truncated, not a torch file, or holding objects other than
        tensors and plain containers; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist; check the path")
    return read_torch_dict(path, "download it again")


def read_torch_dict(path: Path, remedy: str) -> dict[str, Any]:
    """``torch.load`` a dict of tensors and plain containers onto the CPU, executing nothing.

    The one reader of torch files the node did not necessarily write (the
    release's, training checkpoints left by an older run); ``remedy`` ends
    each refusal, saying what to do about the file.

    Raises
    ------
    WeightsError
        Truncated, not a torch file, not a dict, or holding other objects.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"checkpoint {path} holds objects other than tensors and plain containers, "
            f"refused without executing them: {str(exc).splitlines()[0]}; {remedy}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WeightsError(
            f"checkpoint {path} is truncated or not a torch checkpoint ({exc}); {remedy}"
        ) from exc
    if not isinstance(data, dict):
        raise WeightsError(
            f"checkpoint {path} holds a {type(data).__name__}, not a checkpoint dict; {remedy}"
        )
    return data


def _tensors_only(entries: Mapping[str, Any], path: Path, what: str) -> StateDict:
    bad = [k for k, v in entries.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"checkpoint {path}: {what} entries {bad[:5]} are not tensors")
    return dict(entries)


def model_state_dict(checkpoint: Mapping[str, Any], path: Path) -> StateDict:
    """The inference state dict of a runner or Lightning checkpoint.

    Runner checkpoints (``{'model', 'ema', ...}``) get the EMA shadow laid over
    the raw model weights, as the release does for inference; Lightning
    checkpoints give their ``state_dict``; a bare mapping of tensors is taken as is.
    """
    path = Path(path)
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        state = _tensors_only(checkpoint["model"], path, "'model'")
        ema = checkpoint.get("ema")
        if ema is None:
            log.warning("release_checkpoint_without_ema", path=str(path))
            return state
        if not isinstance(ema, Mapping):
            raise WeightsError(f"checkpoint {path}: 'ema' is a {type(ema).__name__}, not a mapping")
        shadow = _tensors_only(ema, path, "'ema'")
        unknown = [k for k in shadow if k not in state]
        misshapen = [k for k in shadow if k in state and shadow[k].shape != state[k].shape]
        if unknown or misshapen:
            raise WeightsError(
                f"checkpoint {path}: EMA entries do not match the model (unknown {unknown[:5]}, "
                f"wrong shape {misshapen[:5]}); the file is not a CPDM runner checkpoint"
            )
        state.update(shadow)
        return state
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        return _tensors_only(checkpoint["state_dict"], path, "'state_dict'")
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise WeightsError(
        f"checkpoint {path} has neither 'model' nor 'state_dict' (keys {sorted(checkpoint)[:8]}); "
        "give the release's CPDM, VQGAN or segmentation file"
    )
