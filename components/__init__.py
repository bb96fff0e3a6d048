"""Kubeflow components: one thin wrapper per library step (see docs/architecture.md).

Each module defines a plain function (its body imports ``pcam`` and calls one
library function, nearly always in :mod:`pcam.step`, the component runtime, which
also holds the shared prologue ``step.start``) and ``<name>_op``, the component
bound to :data:`PCAM_IMAGE`.
"""

from components._common import DEFAULT_IMAGE, PCAM_IMAGE, make_component

__all__ = ["DEFAULT_IMAGE", "PCAM_IMAGE", "make_component"]
