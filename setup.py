"""Builds the two native extensions of tfdump-fast.

* ``tfdump_fast._native``: the TF-free engine and on-disk format (csrc/*.cc
  except the bridge) behind a Cython wrapper.
* ``tfdump_fast._bridge``: a small Cython loader that dlopen()s the TF bridge
  library. The bridge itself (csrc/tf_bridge.cc) is *not* compiled here: it
  is compiled on first use against the TensorFlow that runs, so its sources
  are shipped inside the package as ``tfdump_fast/_bridge_src``.
"""

import os
import shutil

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
ENGINE_SOURCES = ["csrc/format.cc", "csrc/engine.cc"]
BRIDGE_SOURCES = ["tf_bridge.cc", "engine_api.h", "bridge_api.h"]
CXXFLAGS = ["-std=c++17", "-O3", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]


class build_py_with_bridge_sources(build_py):
    """Copies the bridge's C++ sources into the package for first-use builds."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "tfdump_fast", "_bridge_src")
        os.makedirs(dest, exist_ok=True)
        for name in BRIDGE_SOURCES:
            shutil.copy2(os.path.join(HERE, CSRC, name), os.path.join(dest, name))


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
