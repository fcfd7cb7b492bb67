"""Initialisation by hand: Glorot-uniform weights and zero biases, drawn from the run's seeded RNG."""
import numpy as np


def glorot_uniform(params, rng):
    """Fill params (name -> NDArray) in place: weights uniform in +-sqrt(6 / (fan_in + fan_out)), biases 0.

    For a weight of shape (out, in, *kernel), fan_in = in * prod(kernel) and fan_out = out * prod(kernel),
    as mx.init.Xavier(rnd_type='uniform', factor_type='avg', magnitude=3) counts them.
    """
    for name, array in params.items():
        if name.endswith("_weight"):
            receptive = int(np.prod(array.shape[2:]))
            fan_in, fan_out = array.shape[1] * receptive, array.shape[0] * receptive
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            array[:] = rng.uniform(-bound, bound, size=array.shape).astype(np.float32)
        elif name.endswith("_bias"):
            array[:] = 0
        else:
            raise ValueError(f"no initialiser for parameter {name}")
