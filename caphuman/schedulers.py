"""Noise schedulers by name, all built from SD 1.5's training schedule.

The published model was trained with ldm's "linear" schedule, betas = linspace(sqrt(0.00085),
sqrt(0.012), 1000) ** 2, which diffusers calls "scaled_linear"; epsilon prediction; DDIM with
steps_offset 1 and alphas_cumprod[0] as the final alpha, which is what ldm's DDIM sampler does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from caphuman.errors import ConfigError

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

SD15_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
    "set_alpha_to_one": False,
}

# name -> (diffusers scheduler class name, options on top of the training schedule). The one list
# of scheduler names: sampling.scheduler is checked against it and `caphuman sample --help` shows
# it, so the classes are named here and imported only when one is built (no diffusers for --help).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def make_scheduler(name: str, base_config: dict[str, Any] | None = None) -> SchedulerMixin:
    """Build scheduler ``name`` on the training schedule of ``base_config`` (default: SD 1.5's).

    ``base_config`` is typically a loaded checkpoint's scheduler config, so fine-tunes that
    changed the schedule keep it. Raises ConfigError for an unknown name.
    """
    import diffusers

    if name not in SCHEDULERS:
        raise ConfigError(f"Unknown scheduler '{name}'; choose from {', '.join(SCHEDULERS)}.")
    class_name, options = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, class_name)
    config = dict(SD15_SCHEDULE if base_config is None else base_config)
    config.update(options)
    return scheduler_class.from_config(config)
