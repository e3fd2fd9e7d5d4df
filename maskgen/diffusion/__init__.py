"""Diffusion objectives, samplers and classifier-free guidance for continuous data, in pure JAX.

- `objectives`: rectified flow (SiT, arXiv 2401.08740), DDPM on the cosine schedule with epsilon or
  v prediction and an optional learned variance (improved DDPM, arXiv 2102.09672; MAR's DiffLoss,
  arXiv 2406.11838), EDM preconditioning (arXiv 2206.00364); `make_objective(kind, **settings)`;
- `samplers`: `sample(objective, network, noise, rng, sampler=..., num_steps=...)` with Euler,
  Heun, DDIM and DDPM (ancestral) steps as static-shape `lax` loops;
- `guidance`: `guided_network` (classifier-free guidance on a doubled batch, arXiv 2207.12598) and
  its scale schedules (constant, linear, guidance interval arXiv 2404.07724);
- `analytic`: the exact network of each objective for Gaussian data, a reference for samplers.
"""

from maskgen.diffusion.objectives import EDM, OBJECTIVES, CosineDiffusion, RectifiedFlow, make_objective
from maskgen.diffusion.samplers import SAMPLERS, sample
from maskgen.diffusion.guidance import GUIDANCE_SCHEDULES, guided_network, scale_schedule

__all__ = ["make_objective", "OBJECTIVES", "RectifiedFlow", "CosineDiffusion", "EDM", "sample", "SAMPLERS",
           "guided_network", "scale_schedule", "GUIDANCE_SCHEDULES"]
