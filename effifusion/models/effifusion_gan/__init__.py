"""EffiFusion-GAN (seeds 000/001): MP-SENet with depthwise-separable dense blocks and dual-norm attention."""

from effifusion.models.effifusion_gan.generator import Generator as MODEL  # noqa: F401  (the registry's entry)
