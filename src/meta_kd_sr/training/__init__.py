"""Fitting a student with Lightning: the ``SRModule``, the frozen teacher, run safety and progress.

``module.SRModule`` wires built objects and calls :func:`meta_kd_sr.meta.run_iteration`; ``teacher`` freezes
the teacher; ``recovery`` keeps long runs resumable; ``sanity``, ``progress`` and ``projection`` are what a
run checks and prints.
"""
