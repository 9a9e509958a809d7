"""libvgpu: hard device-memory caps and compute shares for CUDA programs, without code changes.

This wheel installs the ``vgpu`` command and ``libvgpu.so``, the library it preloads::

    vgpu run --memory 4g -- python train.py

``library_path()`` is for those who set ``LD_PRELOAD`` themselves::

    LD_PRELOAD=$(python -m libvgpu) CUDA_DEVICE_MEMORY_LIMIT=4g python train.py
"""

import os
import sys

__all__ = ["library_path", "vgpu_path"]


def _installed(name, subdir):
    """The absolute path of a file this distribution installed outside site-packages.

    The wheel's RECORD knows where pip put it (``<prefix>/lib/libvgpu.so`` for a virtualenv,
    ``~/.local/lib/libvgpu.so`` for ``pip install --user``, ...); ``sys.prefix`` is the fallback.
    """
    candidates = []
    try:
        from importlib.metadata import PackageNotFoundError, files
    except ImportError:  # pragma: no cover (Python < 3.8)
        files = None
    if files is not None:
        try:
            candidates = [f.locate() for f in files("libvgpu") or [] if f.name == name]
        except PackageNotFoundError:
            pass
    candidates.append(os.path.join(sys.prefix, subdir, name))
    for c in candidates:
        path = os.path.realpath(str(c))
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("%s is not installed with this libvgpu package (looked at %s)"
                            % (name, ", ".join(str(c) for c in candidates)))


def library_path():
    """Absolute path of the installed ``libvgpu.so`` (the value for ``LD_PRELOAD``)."""
    return _installed("libvgpu.so", "lib")


def vgpu_path():
    """Absolute path of the installed ``vgpu`` command."""
    return _installed("vgpu", "bin")
