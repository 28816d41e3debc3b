"""The container image every lab host gets, built from the machine's own binaries.

Labs must work with no registry and no network, so the image is assembled locally: static
busybox for the shell tools, plus iperf3 and the shared libraries it links so benchmarks can
measure throughput between containers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

IMAGE = "pnbusybox:latest"
IMAGE_CHANGES = ('CMD ["/bin/sh"]', "ENV PATH=/bin:/usr/bin")
_LIB_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def _which(name: str) -> Path:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise FileNotFoundError(f"{name} is needed for the lab image: apt-get install busybox-static iperf3")
    return Path(found)


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries `ldd` resolves for BINARY, the dynamic loader included, vdso excluded."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return [Path(m.group(1)) for m in map(_LIB_PATH.search, out.splitlines()) if m]


def _copy_at_same_path(src: Path, rootfs: Path) -> None:
    """Copy the file's content (not a symlink) to the same absolute path inside the rootfs."""
    dest = rootfs / src.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


def build_image_rootfs(dest: Path) -> Path:
    """Lay out the image's root filesystem in DEST (which must not exist yet) and return DEST."""
    for sub in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
        (dest / sub).mkdir(parents=True)
    (dest / "tmp").chmod(0o1777)
    busybox = _which("busybox")
    shutil.copy2(busybox, dest / "bin" / "busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            (dest / "bin" / applet).symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    iperf3 = _which("iperf3")
    for path in (iperf3, *shared_libraries(iperf3)):
        _copy_at_same_path(path, dest)
    return dest


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_image_tar(rootfs: Path, dest: Path) -> Path:
    """Tar the rootfs for `docker import`, built once and imported into every host."""
    with tarfile.open(dest, "w") as tar:
        tar.add(rootfs, arcname=".", filter=_owned_by_root)
    return dest
