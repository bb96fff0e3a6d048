"""Inference step 1: list the slides (one pod each) or the patch source found in a folder."""

# No `from __future__ import annotations`: kfp reads the real annotation objects.
from components._common import make_component


def predict_list(source_uri: str, kind: str) -> list:
    """List what ``source_uri`` (a local or gs:// folder or file) holds to predict.

    One output per task (``kind`` picks it): kfp.local 2.17 cannot iterate a
    ``ParallelFor`` over one field of a NamedTuple output, and a list of zero or one
    patch sources needs no ``dsl.If``.

    Args:
        source_uri: Folder (or one file) of slides and/or patches.
        kind: ``slides`` or ``patches``.

    Returns:
        For ``slides``, the slide URIs (one ParallelFor item each); for ``patches``,
        ``[source_uri]`` when it holds patches, else ``[]``.
    """
    from pcam import step

    return step.list_source(source_uri, kind)


predict_list_op = make_component(predict_list)
