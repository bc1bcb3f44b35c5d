"""gan_runner: a config-driven experiment runner for generative adversarial networks."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    # Here, not in a submodule: composing any gan_runner config imports this package first.
    from omegaconf import OmegaConf

    def r1_gamma(resolution: int | None, batch_size: int) -> float:
        """stylegan2-ada's cfg=auto R1 weight: γ = 0.0002·resolution²/batch (10, R1's usual
        weight, on data without a resolution, which a StyleGAN refuses anyway)."""
        if resolution is None:
            return 10.0
        return 0.0002 * int(resolution) ** 2 / int(batch_size)

    if not OmegaConf.has_resolver("gan_runner.r1_gamma"):
        OmegaConf.register_new_resolver("gan_runner.r1_gamma", r1_gamma)


_register_resolvers()
