"""Triton kernels (GPU; testable on CPU tensors with TRITON_INTERPRET=1).

Modules here import triton at import time; fastgen.ops imports them lazily, only when triton
is available.
"""
