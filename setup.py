"""Builds the two native extensions of tfdump-fast.

* ``tfdump_fast._native``: the TF-free engine and on-disk format (csrc/*.cc
  except the bridge) behind a Cython wrapper.
* ``tfdump_fast._bridge``: a small Cython loader that dlopen()s the TF bridge
  library. The bridge itself (csrc/bridge/) is *not* compiled here: it is
  compiled on first use against the TensorFlow that runs, so its sources (the
  files csrc/bridge/SOURCES lists, and that list) are shipped inside the
  package as ``tfdump_fast/_bridge_src``.
"""

import os
import shutil

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
ENGINE_SOURCES = ["csrc/format.cc", "csrc/engine.cc", "csrc/engine_frames.cc"]
BRIDGE_SOURCE_LIST = "bridge/SOURCES"  # relative to csrc/, as the listed files are


def bridge_sources():
    """The bridge's source list, then every file it names (relative to csrc/)."""
    with open(os.path.join(HERE, CSRC, BRIDGE_SOURCE_LIST)) as f:
        names = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    return [BRIDGE_SOURCE_LIST] + names
CXXFLAGS = ["-std=c++17", "-O3", "-fvisibility=hidden", "-Wall"]


class build_py_with_bridge_sources(build_py):
    """Copies the bridge's C++ sources into the package for first-use builds."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "tfdump_fast", "_bridge_src")
        for name in bridge_sources():
            target = os.path.join(dest, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(HERE, CSRC, name), target)


extensions = [
    Extension(
        "tfdump_fast._native",
        sources=["src/tfdump_fast/_native.pyx"] + ENGINE_SOURCES,
        include_dirs=[CSRC],
        language="c++",
        extra_compile_args=CXXFLAGS,
        libraries=["pthread"],
    ),
    Extension(
        "tfdump_fast._bridge",
        sources=["src/tfdump_fast/_bridge.pyx"],
        include_dirs=[CSRC],
        language="c++",
        extra_compile_args=CXXFLAGS,
        libraries=["dl"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        include_path=["src"],
    ),
    cmdclass={"build_py": build_py_with_bridge_sources},
)
