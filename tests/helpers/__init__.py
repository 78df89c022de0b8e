"""Code shared by the test folders; pytest puts tests/ on ``sys.path`` (``pythonpath`` in pyproject.toml).

Import as ``from helpers.run_if import RunIf``. ``train_config`` composes the real Hydra config,
``meta_setup`` builds tiny meta-KD setups, ``model_helpers`` and ``official_oracle`` tiny networks and the
official EDSR/RCAN code, ``ddp_helpers`` the DDP subprocess runs, ``recovery_runs`` CLI runs in a subprocess.
"""
