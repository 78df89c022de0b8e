import logging
from types import SimpleNamespace

import pytest

from meta_kd_sr.training.projection import ProjectedTime, projection_text


class CPUAccelerator:  # the name is what ProjectedTime reads
    pass


class CUDAAccelerator:
    pass


def _run(callback, seconds_per_step, steps, accelerator=CPUAccelerator, max_steps=300_000):
    clock = iter([i * seconds_per_step for i in range(steps)])
    callback.clock = lambda: next(clock)
    trainer = SimpleNamespace(max_steps=max_steps, accelerator=accelerator(), is_global_zero=True)
    for step in range(1, steps + 1):
        trainer.global_step = step
        callback.on_train_batch_end(trainer)


def test_a_long_cpu_run_warns_once_with_its_projection(caplog):
    callback = ProjectedTime(warn_hours=3, measure_steps=5)
    with caplog.at_level(logging.WARNING, logger="meta_kd_sr.training.projection"):
        _run(callback, 3.42, 20)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "projected to take 285.0 h (299994 iterations at 3.42 s each)" in warnings[0]
    assert "experiment=tiny_sr" in warnings[0]


@pytest.mark.parametrize(("seconds", "accelerator"), [(0.01, CPUAccelerator), (3.42, CUDAAccelerator)])
def test_a_short_run_or_a_gpu_run_does_not_warn(caplog, seconds, accelerator):
    callback = ProjectedTime(warn_hours=3, measure_steps=5)
    with caplog.at_level(logging.WARNING, logger="meta_kd_sr.training.projection"):
        _run(callback, seconds, 20, accelerator)
    assert caplog.records == [] and callback.projected_s is not None


def test_projection_text_and_bad_settings():
    assert projection_text(2.0, 3600) == "2.0 h (3600 iterations at 2.00 s each)"
    with pytest.raises(ValueError, match="warn_hours"):
        ProjectedTime(warn_hours=0)
