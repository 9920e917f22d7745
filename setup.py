"""The package's one C extension; everything else is in setup.cfg.

``s3fs_mount/s3/_md5lanes.c``: the MD5 of several parts of an object at once, in vector lanes
(an ETag-only object's check: bench/README.md, round 40). Optional: where it cannot be built
(no compiler, another CPU) the package installs without it and hashlib hashes each part
(``s3fs_mount/s3/checksums.py``), the same digests at about 3x the CPU.
"""

import platform

from setuptools import Extension, setup

X86_64 = platform.machine().lower() in ("x86_64", "amd64")

MD5_LANES = Extension(
    "s3fs_mount.s3._md5lanes", ["s3fs_mount/s3/_md5lanes.c"], extra_compile_args=["-O3"], optional=True
)

setup(ext_modules=[MD5_LANES] if X86_64 else [])
