"""The device's decode-path ops: Triton kernels on CUDA, torch elsewhere (kernels/ops.py)."""
from .ops import KERNEL_CHOICES, DeviceOps, resolve_kernels, rms_norm, rotate_half, triton_usable

__all__ = ["KERNEL_CHOICES", "DeviceOps", "resolve_kernels", "rms_norm", "rotate_half", "triton_usable"]
