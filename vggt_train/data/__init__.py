"""Co3D data: raw-layout reading (co3d), conversion to Arrow shards (convert, merge, verify), synthetic scenes.

Kept import-light: conversion workers import this package, and must not pay for `datasets`.
"""

from vggt_train.data.schema import decode_depth, decode_image

__all__ = ["decode_depth", "decode_image"]
