"""Diffusion building blocks shared by the generative papers (SVG first; DC-AE, CAN, SIGE later).

`flow_matching`: the straight noise path of rectified flow (x_t = (1 - t) x_0 + t noise, velocity noise - x_0) and
its shifted time schedules. `sampling`: the Euler ODE sampler and classifier-free guidance. Everything is gin-free
jnp; a model enters as a plain function, so the sampler knows nothing about Flax or attention backends.
"""

from jaxgen.diffusion.flow_matching import interpolate, sample_times, shift_times, velocity_target
from jaxgen.diffusion.sampling import cfg_combine, euler_sample, euler_timesteps, guided_velocity

__all__ = ["cfg_combine", "euler_sample", "euler_timesteps", "guided_velocity", "interpolate", "sample_times",
           "shift_times", "velocity_target"]
