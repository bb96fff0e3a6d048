"""P4M group convolutions: the eight symmetries of the square built into the CNN's weights.

A tumour patch is a tumour patch whatever way up it was scanned. The study teaches that
to an ordinary CNN with flips and quarter turns in the data and votes over views at test
time; a P4M network (Cohen & Welling 2016; Veeling et al. 2018 on PCam) has it by
construction. Each learned filter is used in all 8 orientations (4 rotations, each with
and without a flip), so a feature map has 8 orientation channels per filter, and turning
or flipping the input turns or flips every map and permutes its 8 channels. After the
last block :class:`OrientationPool` takes the maximum over the 8 channels and global
average pooling removes where a feature was: the prediction is the same, up to float
rounding, for all 8 views of a patch (``tests/unit/test_gconv.py`` checks it).

Channel layout: a P4M feature map with ``c`` filters has ``8 * c`` channels,
orientation-major (channel ``g * c + f`` is filter ``f`` in orientation ``g``). Batch
normalisation must share one mean and variance across a filter's 8 orientations or the
symmetry breaks: :class:`GroupBatchNorm`.

Exactness needs even sizes at every 2x2 pooling and 'same' padding with odd kernels:
96 -> 48 -> 24 -> 12 -> 6 -> 3 holds for five blocks.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

ORDER = 8
"""Elements of p4m: rotations r = 0..3 (quarter turns), each without (m = 0) and with (m = 1) a flip."""


def _matrix(m: int, r: int) -> np.ndarray:
    """The element (m, r) as a 2x2 integer matrix on (row, column) offsets: flip first, then rotate."""
    flip = np.array([[1, 0], [0, -1]]) if m else np.eye(2, dtype=int)
    turn = np.linalg.matrix_power(np.array([[0, -1], [1, 0]]), r)  # one quarter turn, as np.rot90 does
    return (turn @ flip).astype(int)


_ELEMENTS = [_matrix(m, r) for m in (0, 1) for r in range(4)]


def _index(matrix: np.ndarray) -> int:
    return next(i for i, e in enumerate(_ELEMENTS) if np.array_equal(e, matrix))


def _tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(spatial, group) gather tables for kernels of ``size`` x ``size``.

    ``spatial[g]`` lists, for each position of the filter turned by ``g``, the position
    of the original filter it takes its weight from; ``group[g][h]`` is the orientation
    channel ``g^-1 h`` that the turned filter reads for input orientation ``h``.
    """
    centre = (size - 1) / 2
    positions = [(i, j) for i in range(size) for j in range(size)]
    spatial = np.zeros((ORDER, size * size), dtype=np.int32)
    group = np.zeros((ORDER, ORDER), dtype=np.int32)
    for g, element in enumerate(_ELEMENTS):
        inverse = np.round(np.linalg.inv(element)).astype(int)
        for k, (i, j) in enumerate(positions):
            src = inverse @ np.array([i - centre, j - centre])
            spatial[g, k] = positions.index((int(round(src[0] + centre)), int(round(src[1] + centre))))
        for h, other in enumerate(_ELEMENTS):
            group[g, h] = _index(inverse @ other)
    return spatial, group


@keras.saving.register_keras_serializable(package="pcam")
class P4MConv2D(layers.Layer):
    """A 'same'-padded, bias-free P4M convolution with ``filters`` learned filters (``8 * filters`` maps out).

    ``lifting=True`` takes an ordinary image (the first layer); otherwise the input is a
    P4M feature map with ``8 * c`` channels.
    """

    def __init__(self, filters: int, kernel_size: int = 3, lifting: bool = False, **kwargs: Any) -> None:
        """``filters`` learned filters of ``kernel_size`` (odd); ``lifting`` for the first layer."""
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"P4MConv2D: kernel_size must be odd for an exact symmetry, not {kernel_size}")
        self.filters, self.kernel_size, self.lifting = filters, kernel_size, lifting
        spatial, group = _tables(kernel_size)
        self._spatial, self._group = spatial, group

    def build(self, input_shape: Any) -> None:
        """Create the learned filters: one per output filter, not one per orientation."""
        channels = int(input_shape[-1])
        if not self.lifting and channels % ORDER:
            raise ValueError(f"P4MConv2D: a P4M input has a multiple of {ORDER} channels, not {channels}")
        k = self.kernel_size
        # lifting: (k*k, c_in, filters); otherwise (k*k, 8, c_in/8, filters). Keras' fan-in
        # for either shape is k*k*c_in, that of the full kernel: He initialisation holds.
        shape = (k * k, channels, self.filters) if self.lifting else (k * k, ORDER, channels // ORDER, self.filters)
        self.kernel = self.add_weight(
            name="kernel", shape=shape, initializer=keras.initializers.HeNormal(), trainable=True
        )

    def _full_kernel(self) -> Any:
        """The ordinary conv kernel (k, k, c_in, 8 * filters): every filter in every orientation."""
        k = self.kernel_size
        turned = []
        for g in range(ORDER):
            w = ops.take(self.kernel, self._spatial[g], axis=0)
            if not self.lifting:
                w = ops.take(w, self._group[g], axis=1)
            turned.append(w)
        w = ops.stack(turned, axis=-2)  # (k*k[, 8], c_in, 8, filters): orientation-major output channels
        c_in = w.shape[-3] * (1 if self.lifting else ORDER)
        return ops.reshape(w, (k, k, c_in, ORDER * self.filters))

    def call(self, inputs: Any) -> Any:
        """An ordinary 'same' convolution with the filters in all 8 orientations."""
        return ops.conv(inputs, ops.cast(self._full_kernel(), inputs.dtype), strides=1, padding="same")

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        """Same height and width, 8 maps per filter."""
        return (*input_shape[:-1], self.filters * ORDER)

    def get_config(self) -> dict[str, Any]:
        """What ``model.keras`` stores to rebuild the layer."""
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "lifting": self.lifting,
        }


@keras.saving.register_keras_serializable(package="pcam")
class OrientationPool(layers.Layer):
    """The maximum over each filter's 8 orientation channels: a P4M map becomes an ordinary one, turn-invariant."""

    def call(self, inputs: Any) -> Any:
        """Max over the orientation axis of the ``(8, filters)`` channel view."""
        shape = ops.shape(inputs)
        grouped = ops.reshape(inputs, (shape[0], shape[1], shape[2], ORDER, inputs.shape[-1] // ORDER))
        return ops.max(grouped, axis=3)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        """One map per filter."""
        return (*input_shape[:-1], input_shape[-1] // ORDER)


@keras.saving.register_keras_serializable(package="pcam")
class GroupBatchNorm(layers.Layer):
    """BatchNorm with one mean, variance, scale and shift per filter, shared by its 8 orientations.

    Written out rather than Keras' BatchNormalization on a reshaped view: that view has
    few channels (2-32 learned filters) and ran 1.3x slower per training step than the
    plain CNN; this one reduces over the ordinary 4-D map and averages the 8 orientations'
    statistics afterwards, at the plain BatchNorm's cost.
    """

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs: Any) -> None:
        """``momentum`` of the moving statistics and ``epsilon``, as Keras' BatchNormalization has them."""
        super().__init__(**kwargs)
        self.momentum, self.epsilon = momentum, epsilon

    def build(self, input_shape: Any) -> None:
        """Scale, shift and moving statistics: one of each per filter."""
        filters = int(input_shape[-1]) // ORDER
        self.gamma = self.add_weight(name="gamma", shape=(filters,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(filters,), initializer="zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=(filters,), initializer="zeros", trainable=False)
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(filters,), initializer="ones", trainable=False
        )

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        """Normalise with the batch's statistics (and update the moving ones) in training, else the moving ones."""
        if training:
            x = ops.cast(inputs, "float32")
            per_channel = ops.reshape(ops.mean(x, axis=(0, 1, 2)), (ORDER, -1))
            squares = ops.reshape(ops.mean(ops.square(x), axis=(0, 1, 2)), (ORDER, -1))
            mean = ops.mean(per_channel, axis=0)
            variance = ops.maximum(ops.mean(squares, axis=0) - ops.square(mean), 0.0)
            self.moving_mean.assign(self.momentum * self.moving_mean + (1 - self.momentum) * mean)
            self.moving_variance.assign(self.momentum * self.moving_variance + (1 - self.momentum) * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        scale = self.gamma * ops.rsqrt(variance + self.epsilon)
        offset = self.beta - mean * scale
        tile = (ORDER,)
        return inputs * ops.cast(ops.tile(scale, tile), inputs.dtype) + ops.cast(ops.tile(offset, tile), inputs.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        """Unchanged."""
        return input_shape

    def get_config(self) -> dict[str, Any]:
        """What ``model.keras`` stores to rebuild the layer."""
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}
