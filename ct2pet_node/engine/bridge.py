"""The Brownian-bridge schedule and reverse update of CPDM (BBDM's formulation).

The schedule owns no weights and never calls a network: the pipeline writes
the sampling loop out, calling the network and then :meth:`BridgeSchedule.step`
(diffusers' scheduler/pipeline split). The arithmetic follows the release's
``BrownianBridgeModel`` (xuekt98/BBDM) exactly, including its float32 buffers,
so that the release's weights give the release's numbers.

Tensors are latents of shape (B, C, h, w); timesteps index the T-entry
schedule arrays, T-1 being the CT end (x = y) and 0 the PET end (x = x0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ct2pet_node.errors import EngineError, WeightsError

MT_TYPES = ("linear", "sin")
OBJECTIVES = ("grad", "noise", "ysubx")
SAMPLE_TYPES = ("linear", "cosine")


def _m_t(num_timesteps: int, mt_type: str) -> np.ndarray:
    """Bridge mixing weight m_t for t = 0..T-1, float64 like the release computes it.

    The release's ``sin`` is, despite its name, a geometric ramp: 1.0075 ** t
    over linspace(0, T, T), divided by its last value, whose own value is then
    set to 0.999 (reference README, section 6).
    """
    if mt_type == "linear":
        return np.linspace(0.001, 0.999, num_timesteps)
    m_t: np.ndarray = 1.0075 ** np.linspace(0, num_timesteps, num_timesteps)
    m_t = m_t / m_t[-1]
    m_t[-1] = 0.999
    return m_t


@dataclass(frozen=True, slots=True)
class BridgeSchedule:
    """Brownian-bridge noise schedule and sampler update.

    Parameters
    ----------
    num_timesteps : int
        T, the number of bridge timesteps (1000 in the release).
    mt_type : str
        ``"linear"`` (m_t = linspace(0.001, 0.999, T)) or ``"sin"`` (the
        release's geometric ramp of that name, see :func:`_m_t`).
    max_var : float
        Scale of the bridge variance, var_t = 2 (m_t - m_t^2) max_var.
    eta : float
        Default scale of the fresh noise in the reverse update (0: deterministic).
    objective : str
        What the network predicts: ``"grad"`` (m_t (y - x0) + sigma_t eps),
        ``"noise"`` (eps) or ``"ysubx"`` (y - x0).
    skip_sample : bool
        Whether sampling uses ``sample_step`` skipped steps rather than all T.
    sample_type : str
        Skip schedule shape: ``"linear"`` or ``"cosine"``.
    sample_step : int
        Default number of sampling steps S.
    clip_denoised : bool
        Clamp each x0 estimate to [-1, 1] (the release's ``testing.clip_denoised``).
    """

    num_timesteps: int = 1000
    mt_type: str = "linear"
    max_var: float = 1.0
    eta: float = 1.0
    objective: str = "grad"
    skip_sample: bool = True
    sample_type: str = "linear"
    sample_step: int = 200
    clip_denoised: bool = False
    m_t: np.ndarray = field(init=False, repr=False, compare=False)
    variance_t: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.num_timesteps < 2:
            problems.append(f"num_timesteps {self.num_timesteps} must be at least 2")
        if self.mt_type not in MT_TYPES:
            problems.append(f"mt_type {self.mt_type!r} is not one of {MT_TYPES}")
        if self.objective not in OBJECTIVES:
            problems.append(f"objective {self.objective!r} is not one of {OBJECTIVES}")
        if self.sample_type not in SAMPLE_TYPES:
            problems.append(f"sample_type {self.sample_type!r} is not one of {SAMPLE_TYPES}")
        if not self.max_var > 0:
            problems.append(f"max_var {self.max_var} must be positive")
        if self.eta < 0:
            problems.append(f"eta {self.eta} must be >= 0")
        if problems:
            raise WeightsError("unusable bridge schedule: " + "; ".join(problems))
        m_t = _m_t(self.num_timesteps, self.mt_type)
        variance_t = 2.0 * (m_t - m_t**2) * self.max_var
        # The release registers these as float32 buffers and does all its
        # arithmetic on them; keeping float32 reproduces its rounding.
        object.__setattr__(self, "m_t", m_t.astype(np.float32))
        object.__setattr__(self, "variance_t", variance_t.astype(np.float32))

    @classmethod
    def from_config(cls, params: Mapping[str, Any]) -> BridgeSchedule:
        """Build from a mapping with the release's ``model.BB.params`` names (extra keys ignored)."""
        names = {f for f in cls.__dataclass_fields__ if cls.__dataclass_fields__[f].init}
        kwargs = {k: params[k] for k in names if k in params and params[k] is not None}
        return cls(**kwargs)

    def to_config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-ready dict (inverse of :meth:`from_config`)."""
        return {
            "num_timesteps": self.num_timesteps,
            "mt_type": self.mt_type,
            "max_var": float(self.max_var),
            "eta": float(self.eta),
            "objective": self.objective,
            "skip_sample": self.skip_sample,
            "sample_type": self.sample_type,
            "sample_step": self.sample_step,
            "clip_denoised": self.clip_denoised,
        }

    def timesteps(self, steps: int | None = None) -> np.ndarray:
        """The decreasing timesteps the sampler visits, int64, ending at 0.

        Parameters
        ----------
        steps : int, optional
            Number of sampling steps S; default ``sample_step``, or all T
            steps when ``skip_sample`` is off and no count is given.

        Notes
        -----
        ``linear``: the release's ``torch.arange(T-1, 1, step=-(T-1)/(S-2))``
        with that non-integer step (computed by torch in float32, so values
        that land next to an integer truncate as the release's do), each
        value truncated to an integer, then 1 and 0: exactly S timesteps, so
        S denoiser evaluations (S = 200 visits 999, 993, 988, ..., 5, 1, 0).
        ``cosine``: the release's ``(cos(linspace(0, T, S+1) / T * pi) + 1) / 2 * T``
        truncated to integers, S + 1 values. The release indexes its buffers
        with the first of them, T itself, and fails there (out of range);
        we clamp it to T-1 and drop a repeat should clamping make one (a
        repeated timestep is an exact no-op of the update). With
        ``skip_sample`` off the release visits all T timesteps whatever
        ``sample_step`` says; an explicit ``steps`` still skips here, so that
        the node's ``[engine] steps`` means the same for every model. S > T
        means every timestep once (the release's arange would repeat values).
        """
        T = self.num_timesteps
        if steps is None and not self.skip_sample:
            return np.arange(T - 1, -1, -1, dtype=np.int64)
        count = self.sample_step if steps is None else int(steps)
        if count > T:
            return np.arange(T - 1, -1, -1, dtype=np.int64)
        if self.sample_type == "linear":
            if count < 3:
                raise EngineError(f"sampling steps {count} is too few for the linear schedule; use 3 or more")
            # torch, not numpy: the release's float32 arange decides where values truncate.
            mid = torch.arange(T - 1, 1, step=-((T - 1) / (count - 2)), dtype=torch.float32).long().numpy()
            return np.concatenate([mid, np.array([1, 0], dtype=np.int64)])
        if count < 1:
            raise EngineError(f"sampling steps {count} must be at least 1")
        raw = np.linspace(0, T, count + 1)
        raw = (np.cos(raw / T * np.pi) + 1.0) / 2.0 * T
        clamped = np.minimum(raw.astype(np.int64), T - 1)
        _, first = np.unique(clamped, return_index=True)
        return clamped[np.sort(first)]

    def _at(self, table: np.ndarray, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """Values of a schedule table at timesteps ``t``, shaped to broadcast over ``like``."""
        source = torch.from_numpy(table)
        if isinstance(t, int):
            return source[t].to(device=like.device, dtype=like.dtype)
        picked = source[t.detach().to("cpu", torch.long)]
        return picked.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(
        self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor
    ) -> torch.Tensor:
        """Forward bridge sample x_t = (1 - m_t) x0 + m_t y + sqrt(var_t) noise (training)."""
        m_t = self._at(self.m_t, t, x0)
        sigma_t = torch.sqrt(self._at(self.variance_t, t, x0))
        return (1.0 - m_t) * x0 + m_t * y + sigma_t * noise

    def objective_target(
        self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor
    ) -> torch.Tensor:
        """What the network is trained to predict at (x0, y, t, noise) for this objective."""
        if self.objective == "grad":
            m_t = self._at(self.m_t, t, x0)
            sigma_t = torch.sqrt(self._at(self.variance_t, t, x0))
            return m_t * (y - x0) + sigma_t * noise
        if self.objective == "noise":
            return noise
        return y - x0

    # The brief's name; ``objective`` is also the config field holding the kind.
    def predict_x0(
        self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor | int, net_out: torch.Tensor
    ) -> torch.Tensor:
        """Estimate x0 from the network output at x_t (clamped if ``clip_denoised``)."""
        if self.objective == "grad":
            x0 = x_t - net_out
        elif self.objective == "noise":
            m_t = self._at(self.m_t, t, x_t)
            sigma_t = torch.sqrt(self._at(self.variance_t, t, x_t))
            x0 = (x_t - m_t * y - sigma_t * net_out) / (1.0 - m_t)
        else:
            x0 = y - net_out
        return x0.clamp(-1.0, 1.0) if self.clip_denoised else x0

    def step(
        self,
        x0_hat: torch.Tensor,
        y: torch.Tensor,
        x_t: torch.Tensor,
        t: int,
        next_t: int | None,
        noise: torch.Tensor | None,
        eta: float | None = None,
    ) -> torch.Tensor:
        """One reverse update from timestep ``t`` to ``next_t``.

        Parameters
        ----------
        x0_hat, y, x_t : torch.Tensor
            (B, C, h, w) x0 estimate, CT latent, and current state.
        t : int
            Current timestep.
        next_t : int or None
            Next timestep; ``None`` (after the timestep 0) returns ``x0_hat``.
        noise : torch.Tensor or None
            Standard normal noise shaped like ``x_t``; may be ``None`` when eta is 0.
        eta : float, optional
            Noise scale; default the schedule's ``eta``.
        """
        if next_t is None or t == 0:
            return x0_hat
        eta = self.eta if eta is None else float(eta)
        m_t, m_nt = self.m_t[t], self.m_t[next_t]
        var_t, var_nt = self.variance_t[t], self.variance_t[next_t]
        # float32 scalar arithmetic, as the release computes it on its buffers.
        sigma2 = (
            (var_t - var_nt * (np.float32(1.0) - m_t) ** 2 / (np.float32(1.0) - m_nt) ** 2) * var_nt / var_t
        )
        sigma2 = max(np.float32(sigma2), np.float32(0.0))
        keep = float(np.sqrt((var_nt - sigma2) / var_t))
        mean = (1.0 - float(m_nt)) * x0_hat + float(m_nt) * y
        mean = mean + keep * (x_t - (1.0 - float(m_t)) * x0_hat - float(m_t) * y)
        if eta == 0.0:
            return mean
        if noise is None:
            raise EngineError(f"eta {eta} needs noise for the step at timestep {t}; pass a noise tensor")
        return mean + (float(np.sqrt(sigma2)) * eta) * noise
