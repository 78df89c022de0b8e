"""Scoring and running a trained network: the SR protocol, inference helpers, memory planning, run reports.

``metrics`` is the protocol (Y channel, border crop, per-image PSNR/SSIM); ``inference`` the self-ensemble,
tiled forward and bicubic baseline; ``memory`` plans large upscales; ``panels`` and ``summary`` show a run.
"""
