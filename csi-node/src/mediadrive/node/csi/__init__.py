"""The CSI node plugin: kubelet's way to mount a drive into a pod.

``mediadrive csi-node run`` serves the CSI Identity and Node services on a unix
socket (:mod:`.server`). A staged volume is one node agent (one FUSE mount per
drive per node, :func:`mediadrive.node.client.mount`) at the staging path; each
pod's volume is a bind mount of it. Agents outlive the plugin: what it staged is
kept in a state folder (:mod:`.state`), so a restarted plugin finds its mounts
again and restarts an agent that died. Agents are started by a launcher
(:mod:`.launcher`): the plugin itself, or ``mediadrive csi-node mounter``
(:mod:`.mounter`) in another container, so they outlive the plugin's container.
See ``docs/csi.md``.
"""

DRIVER_NAME = "csi.mediadrive.io"
VERSION = "0.1.0"
