"""DDIM steps exactly as the reference writes them (prev_step / next_step), for eps and v models."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import VP2PInputError

PREDICTION_TYPES = ("epsilon", "v_prediction")  # what the noise schedule here follows


@dataclass(frozen=True)
class DDIMConfig:
    """SD's schedule; steps_offset=1 is what the reference's pipeline forces on its scheduler."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    set_alpha_to_one: bool = False
    steps_offset: int = 1
    prediction_type: str = "epsilon"

    def check(self) -> "DDIMConfig":
        """Refuse a prediction type or beta schedule the DDIM steps cannot run, as a schedule of any length would
        (a folder's scheduler file, a saved inversion's record), before any step runs."""
        DDIMSchedule(self, 1)
        return self

    @property
    def max_steps(self) -> int:
        """The most DDIM steps leading spacing allows before its step ratio is 1 and the first timestep is the step
        count itself. Fewer steps start at (1000 // steps) * (steps - 1) + 1 (981 at 50, 799 at 400)."""
        return self.num_train_timesteps // 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DDIMConfig":
        keys = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in keys})


class DDIMSchedule:
    """Timesteps and alphas for ``num_steps`` DDIM steps (eta = 0)."""

    def __init__(self, config: DDIMConfig = DDIMConfig(), num_steps: int = 50):
        if config.prediction_type not in PREDICTION_TYPES:
            raise VP2PInputError(f"prediction_type: expected 'epsilon' or 'v_prediction', got {config.prediction_type!r}")
        if not 1 <= num_steps <= config.max_steps:
            raise VP2PInputError(f"steps: expected 1..{config.max_steps}, got {num_steps}")
        self.config, self.num_steps = config, num_steps
        n = config.num_train_timesteps
        if config.beta_schedule == "scaled_linear":
            betas = torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, n, dtype=torch.float64) ** 2
        elif config.beta_schedule == "linear":
            betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float64)
        else:
            raise VP2PInputError(f"beta_schedule: expected 'scaled_linear' or 'linear', got {config.beta_schedule!r}")
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0).float()
        self.final_alpha_cumprod = torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.step_ratio = n // num_steps
        ts = (torch.arange(num_steps) * self.step_ratio).flip(0) + config.steps_offset
        self.timesteps = ts.long()  # denoising order: high t first

    def alpha(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def to_eps(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """The model's prediction as noise (v-prediction: eps = sqrt(a) v + sqrt(1-a) x)."""
        if self.config.prediction_type == "epsilon":
            return model_output
        a = self.alpha(int(t))
        return a ** 0.5 * model_output + (1 - a) ** 0.5 * sample

    def predicted_x0(self, eps: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """The clean latent the prediction at t points to (what ComfyUI's samplers preview)."""
        a_t = self.alpha(int(t))
        return (sample - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5

    def prev_step(self, eps: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        t = int(t)
        a_prev = self.alpha(t - self.step_ratio)
        x0 = self.predicted_x0(eps, t, sample)
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps

    def next_step(self, eps: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """Inversion step from t - ratio to t (the reference's ``next_step``)."""
        t = int(t)
        cur = min(t - self.step_ratio, self.config.num_train_timesteps - 1)
        a_cur = self.alpha(cur)
        a_next = self.alpha(t)
        x0 = (sample - (1 - a_cur) ** 0.5 * eps) / a_cur ** 0.5
        return a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        return a ** 0.5 * noise - (1 - a) ** 0.5 * x0
