"""CapHuman: identity-preserving, 3D-head-controllable human image generation (CVPR 2024), rebuilt."""

__version__ = "0.1.0"
