"""vggt-train: a scalable trainer for VGGT (accelerate + DeepSpeed, sharded Co3D, NPU/GPU/CPU kernels)."""

__version__ = "0.1.0"
