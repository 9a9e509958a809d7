"""``python -m libvgpu``: print the path of the installed libvgpu.so (for LD_PRELOAD)."""

import sys

from . import library_path

if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.stderr.write("usage: python -m libvgpu   (prints the path of libvgpu.so; "
                         "to run a program under a cap: vgpu run --memory 4g -- python train.py)\n")
        sys.exit(2)
    try:
        print(library_path())
    except FileNotFoundError as e:
        sys.stderr.write("libvgpu: %s\n" % e)
        sys.exit(1)
