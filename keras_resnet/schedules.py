"""Learning-rate schedules: Keras's own where it has them, plus one-cycle.

`make_schedule` turns the recipe fields into a `keras.optimizers.schedules`
object counted in optimizer steps:

    cosine:    linear warmup then cosine decay (Keras `CosineDecay` warmup).
    piecewise: constant, multiplied by `lr_decay_factor` at each boundary.
    onecycle:  linear warmup to the peak, then linear decay to ~0 (Smith 2018).
    constant:  the base learning rate.
"""

import keras

SCHEDULES = ("cosine", "piecewise", "onecycle", "constant")


@keras.saving.register_keras_serializable(package="keras_resnet")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear one-cycle: `start -> peak` over `warmup_steps`, `peak -> end` after.

    Args:
        peak: Highest learning rate.
        total_steps: Length of the cycle; the rate stays at `peak * end_factor` after.
        warmup_steps: Steps of the rising ramp.
        start_factor: `start = peak * start_factor`.
        end_factor: `end = peak * end_factor`.
    """

    def __init__(self, peak, total_steps, warmup_steps, start_factor=0.0, end_factor=0.0):
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"OneCycle needs 0 <= warmup_steps <= total_steps. Received: "
                             f"warmup_steps={warmup_steps}, total_steps={total_steps}")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        start = self.peak * self.start_factor
        end = self.peak * self.end_factor
        warm = max(self.warmup_steps, 1)
        rising = start + (self.peak - start) * step / warm
        frac = ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        falling = self.peak + (end - self.peak) * frac
        return ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self):
        return dict(peak=self.peak, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    start_factor=self.start_factor, end_factor=self.end_factor)


def make_schedule(name, base_lr, total_steps, warmup_steps=0, boundaries=(), decay_factor=0.1,
                  final_lr_fraction=0.0, initial_lr_fraction=0.04):
    """Builds a schedule counted in optimizer steps.

    Args:
        name: One of `SCHEDULES`.
        base_lr: The peak (cosine, one-cycle) or initial (piecewise) rate.
        total_steps: Steps of the whole run.
        warmup_steps: Linear warmup from ~0 (cosine, one-cycle).
        boundaries: Step boundaries of the piecewise schedule.
        decay_factor: Piecewise multiplier at each boundary.
        final_lr_fraction: Cosine/one-cycle end rate as a fraction of `base_lr`.
        initial_lr_fraction: One-cycle start rate as a fraction of `base_lr`.

    Returns:
        A `LearningRateSchedule` or a float.
    """
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule. Received: schedule={name!r}. Valid: {SCHEDULES}")
    if base_lr <= 0:
        raise ValueError(f"`learning_rate` must be > 0. Received: learning_rate={base_lr}")
    total_steps = int(total_steps)
    warmup_steps = int(min(warmup_steps, total_steps))
    if name == "constant":
        return float(base_lr)
    if name == "piecewise":
        bounds = [int(b) for b in boundaries]
        if bounds != sorted(bounds) or any(b <= 0 for b in bounds):
            raise ValueError(f"Piecewise boundaries must be increasing positive steps. "
                             f"Received: boundaries={list(boundaries)}")
        values = [float(base_lr) * decay_factor ** i for i in range(len(bounds) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
    if name == "onecycle":
        return OneCycle(base_lr, total_steps, warmup_steps, start_factor=initial_lr_fraction,
                        end_factor=final_lr_fraction)
    # Keras's CosineDecay ramps from initial_learning_rate to warmup_target
    # over warmup_steps, then decays over decay_steps.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else float(base_lr),
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=final_lr_fraction,
        warmup_target=float(base_lr) if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
