"""dctdiff: image diffusion in the block-DCT space (Ning et al., DCTdiff, ICML 2025) on Ray."""

from dctdiff.codec import DCTCodec, PixelCodec, zigzag_order

__all__ = ["DCTCodec", "PixelCodec", "zigzag_order"]
__version__ = "0.1.0"
