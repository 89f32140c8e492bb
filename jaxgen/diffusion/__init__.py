"""Diffusion building blocks shared by the generative papers (SVG first; DC-AE, CAN, SVDQuant, SIGE next).

`flow_matching`: the straight noise path of rectified flow (x_t = (1 - t) x_0 + t noise, velocity noise - x_0) and
its shifted time schedules. `ddpm`: discrete-time diffusion's noise schedules (linear, scaled linear, cosine), the
epsilon / v / x0 predictions and their conversions, the training loss. `sampling`: the Euler ODE sampler and
classifier-free guidance (`guided` for every sampler, `drop_conditions` for training). `ddim`: DDPM's ancestral
sampler, DDIM and DDIM inversion. Everything is gin-free jnp; a model enters as a plain function
`(x, t, step) -> (output, aux)`, so the samplers know nothing about Flax or attention backends, and every sampler is
a `lax.scan` that fits inside one `jit`.
"""

from jaxgen.diffusion.ddim import (DDPM_VARIANCES, TIMESTEP_SPACINGS, ddim_invert, ddim_sample, ddpm_sample,
                                   spaced_timesteps)
from jaxgen.diffusion.ddpm import (PREDICTIONS, SCHEDULES, NoiseSchedule, add_noise, cosine_schedule, linear_schedule,
                                   loss, make_schedule, noisy_example, scaled_linear_schedule, target,
                                   to_x0_and_noise)
from jaxgen.diffusion.flow_matching import interpolate, sample_times, shift_times, velocity_target
from jaxgen.diffusion.sampling import cfg_combine, drop_conditions, euler_sample, euler_timesteps, guided

__all__ = ["DDPM_VARIANCES", "PREDICTIONS", "SCHEDULES", "TIMESTEP_SPACINGS", "NoiseSchedule", "add_noise",
           "cfg_combine", "cosine_schedule", "ddim_invert", "ddim_sample", "ddpm_sample", "drop_conditions",
           "euler_sample", "euler_timesteps", "guided", "interpolate", "linear_schedule", "loss", "make_schedule",
           "noisy_example", "sample_times", "scaled_linear_schedule", "shift_times", "spaced_timesteps", "target",
           "to_x0_and_noise", "velocity_target"]
