"""The regional storage pod (``docs/storage-pods.md``).

``settings.py`` (``PodSettings``), ``chunks.py`` (the chunks on the pod's volume
and their index), ``members.py`` (the region's members and placement),
``tokens.py`` (bearer tokens), ``metrics.py``, ``server.py`` (the HTTP API) and
``service.py`` (the process: serve, drain). The client is
``mediadrive.core.blob.pod``.
"""
