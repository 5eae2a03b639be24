"""Ramp-ups and learning-rate schedules (docs/method.md, Training iteration)."""
import math


def sigmoid_rampup(x, length):
    """exp(-5 (1 - min(x, L)/L)^2); 1 when length is 0."""
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(x, 0.0), length) / length
    return float(math.exp(-5.0 * phase * phase))


def consistency_weight(iteration, consistency, rampup, every=150):
    """w(t) = consistency * sigmoid_rampup(iter // 150, rampup): the ramp climbs once every 150 iterations."""
    return consistency * sigmoid_rampup(iteration // every, rampup)


def poly_lr(base_lr, iteration, max_iterations, power=0.9):
    return base_lr * (1.0 - iteration / max_iterations) ** power
