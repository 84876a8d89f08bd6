"""Helpers shared by every part of the package: errors, image I/O, palette,
checkpoints, seeding and progress bars. Written once, used everywhere."""

from .errors import UserError

__all__ = ["UserError"]
