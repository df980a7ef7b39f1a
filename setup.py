"""Build fastxent's Cython extension, with OpenMP when the compiler supports it.

The build probes OpenMP by compiling and linking a tiny program. Without it the
extension still builds (its loops run serially) and says so loudly here and in
``fastxent.show_config()``; set ``FASTXENT_REQUIRE_OPENMP=1`` to make that an error
(CI does). No ``-march=native``: the wheel must run on any x86-64.
"""

import os
import shutil
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def openmp_flags(compiler):
    """Compile and link flags that give working OpenMP, or None."""
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"]), (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    tmp = tempfile.mkdtemp(prefix="fastxent-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        for cflags, ldflags in candidates:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=ldflags)
                return cflags, ldflags
            except Exception:  # noqa: BLE001 - any failure means "not this flag set"
                continue
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        flags = openmp_flags(self.compiler)
        if flags is None:
            message = (
                "fastxent: the C compiler does not support OpenMP; the Cython kernels will "
                "run on ONE thread. Install an OpenMP-capable compiler (gcc, or clang with "
                "libomp) for parallel kernels."
            )
            if os.environ.get("FASTXENT_REQUIRE_OPENMP") == "1":
                sys.exit(f"error: {message} (FASTXENT_REQUIRE_OPENMP=1)")
            bar = "!" * 78
            print(f"\n{bar}\n{textwrap.fill(message, 78)}\n{bar}\n", file=sys.stderr)
            cflags, ldflags = [], []
        else:
            cflags, ldflags = flags
            print(f"fastxent: OpenMP enabled ({' '.join(cflags)})")
        for ext in self.extensions:
            ext.extra_compile_args += cflags
            ext.extra_link_args += ldflags
        super().build_extensions()


def extensions():
    base = ["-O3", "-fno-math-errno"] if os.name != "nt" else ["/O2"]
    ext = Extension(
        "fastxent.backends._cython_ext",
        ["fastxent/backends/_cython_ext.pyx"],
        include_dirs=[np.get_include(), "fastxent/backends"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=base,
    )
    return cythonize([ext], compiler_directives={"language_level": 3}, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
