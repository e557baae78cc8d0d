"""vaereg: know which VAEs you really have.

Identifies the VAE weights inside Stable Diffusion model files - standalone VAEs, diffusers folders and
full checkpoints - by a canonical identity that does not change with the container, key layout, tensor
order, metadata or storage precision.
"""

__version__ = "0.1.0"
