"""A multi-host Docker lab on one Linux machine, for pynet's multihost tests and benchmarks.

    with Lab(hosts=3) as lab:
        h1, h2, _ = lab.hosts
        h1.docker("run", "--rm", IMAGE, "ping", "-c1", h2.address)

See core.Lab for what a lab is made of, and cli.py for `python -m lab`.
"""

from .cmd import CommandError, LabError
from .core import Lab
from .image import IMAGE, build_image_rootfs
from .nodes import PLUGIN_SOCKET, Host, Node, Outside
from .releases import DockerRelease

__all__ = [
    "IMAGE",
    "PLUGIN_SOCKET",
    "CommandError",
    "DockerRelease",
    "Host",
    "Lab",
    "LabError",
    "Node",
    "Outside",
    "build_image_rootfs",
]
