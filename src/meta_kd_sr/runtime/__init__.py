"""Process mechanics under every stage: atomic file writes, the NaN/inf policy, DDP by hand, console output.

Nothing here knows about students, teachers or KRNets; ``models``, ``data``, ``meta`` and ``training`` build
on it.
"""
