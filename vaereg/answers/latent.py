"""Which known VAEs ``check`` may recommend for a model: only VAEs of the model's latent space.

SD1 and SDXL VAEs share every shape (both are ``kl-f8-4ch``) but not their latents, so the family alone does
not say whether a VAE can decode a model's latents. A known VAE is of the model's latent space when it has
the model's own VAE's encoder (the same ``encoder_id`` makes the same latents, by construction), or when
every base model known for it (the registry's ``base``, the indexed checkpoints that embed it or its
encoder) works in the model's latent space. A VAE whose base is unknown is not recommended for a model
whose base is known. For a model of unknown base (a standalone VAE checked, an architecture vaereg does not
name), the family is all there is to go by, as before.
"""

from __future__ import annotations

from typing import Iterable

from vaereg.identity.base import latent_space


def may_recommend(model_base: str | None, candidate_bases: Iterable[str], *, same_encoder: bool) -> bool:
    """Whether a VAE whose known bases are `candidate_bases` may be recommended for a model of `model_base`."""
    if same_encoder or model_base is None:
        return True
    spaces = {latent_space(base) for base in candidate_bases}
    return spaces == {latent_space(model_base)}
