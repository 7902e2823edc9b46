"""What the guests boot and write to: Debian's kernel, a busybox initramfs whose
/init (files/init.sh) dirties memory at the rate the kernel command line asks
for, and disk images."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .layout import Layout
from .packages import apt
from .system import LabError, run

log = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")  # from busybox-static: the initramfs has no libc
INIT_FILE = Path(__file__).parent / "files" / "init.sh"


def ensure_kernel(layout: Layout) -> None:
    if layout.kernel_path.exists():
        return
    layout.cache_dir.mkdir(parents=True, exist_ok=True)
    depends = run(["apt-cache", "depends", "linux-image-amd64"], "look up Debian's kernel package", text=True)
    match = re.search(r"Depends: (linux-image-\d\S*)", depends.stdout)
    if not match:
        raise LabError("could not tell which kernel linux-image-amd64 depends on (run apt-get update?)")
    with tempfile.TemporaryDirectory(dir=layout.cache_dir) as tmp:
        os.chmod(tmp, 0o755)  # apt's download user must be able to write here
        apt(["download", "-q", match.group(1)], f"download {match.group(1)}", cwd=tmp)
        deb = next(Path(tmp).glob("*.deb"))
        # Stream the package's file tree: the kernel is ~8 MB, its modules ~400 MB.
        with (
            # stderr: dpkg-deb complains of the broken pipe when we stop reading at the kernel.
            subprocess.Popen(
                ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            ) as proc,
            tarfile.open(fileobj=proc.stdout, mode="r|") as tar,
        ):
            kernel = next((m for m in tar if m.name.startswith("./boot/vmlinuz-")), None)
            data = tar.extractfile(kernel).read() if kernel else None
        if data is None:
            raise LabError(f"{deb.name} contains no /boot/vmlinuz-*")
        partial = layout.kernel_path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.rename(layout.kernel_path)
    log.info("guest kernel: %s", kernel.name.removeprefix("./boot/"))


def ensure_initrd(layout: Layout) -> None:
    """The busybox initramfs; rebuilt whenever the /init script or busybox change."""
    init = INIT_FILE.read_bytes()
    stamp = hashlib.sha256(init + BUSYBOX.read_bytes()).hexdigest()
    stamp_file = layout.cache_dir / "initrd.sha256"
    if layout.initrd_path.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for sub in ("bin", "proc", "sys", "dev", "tmp"):
            (tree / sub).mkdir()
        shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
        (tree / "init").write_bytes(init)
        (tree / "init").chmod(0o755)
        names = "\n".join(str(p.relative_to(tree)) for p in sorted(tree.rglob("*")))
        archive = run(["cpio", "-o", "-H", "newc", "--quiet"], "pack the initramfs", cwd=tree, input=names.encode())
    # Renamed into place: a guest starting meanwhile must not read half a file.
    partial = layout.initrd_path.with_suffix(".partial")
    partial.write_bytes(gzip.compress(archive.stdout, compresslevel=1))
    partial.rename(layout.initrd_path)
    stamp_file.write_text(stamp)


def create_disk(path: Path, disk_format: str, size_mib: int) -> None:
    """An empty image, unless one is there already."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    run(["qemu-img", "create", "-q", "-f", disk_format, str(path), f"{size_mib}M"], f"create {path}")
