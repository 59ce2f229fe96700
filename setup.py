"""Build the Cython kernels, with OpenMP when the compiler supports it.

Environment switches:

* ``FASTCONV_OPENMP=0`` builds serial kernels without probing; ``1`` requires OpenMP (the build
  fails if the probe fails); unset or ``probe`` uses OpenMP when the probe compiles, links and
  runs, and otherwise builds serial kernels with a visible warning.
* ``FASTCONV_DEBUG_CYTHON=1`` turns Cython's bounds and wraparound checks back on.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import numpy as np
from Cython import __version__ as cython_version
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = ["_conv", "_conv_backward", "_im2col", "_pool", "_relu", "_openmp"]

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n >= 1 && omp_get_max_threads() >= 1 ? 1 : 0);
        return 0;
    }
    """
)


def openmp_candidates(compiler_type):
    """(compile flags, link flags) that may enable OpenMP, in the order to try them."""
    if compiler_type == "msvc":
        return [(["/openmp"], [])]
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp; it takes the preprocessor flag plus Homebrew's libomp.
        prefix = _brew_prefix("libomp")
        inc = [f"-I{prefix}/include"] if prefix else []
        lib = [f"-L{prefix}/lib", f"-Wl,-rpath,{prefix}/lib"] if prefix else []
        candidates.append((["-Xpreprocessor", "-fopenmp"] + inc, lib + ["-lomp"]))
    return candidates


def _brew_prefix(formula):
    try:
        out = subprocess.run(["brew", "--prefix", formula], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def optimisation_flags(compiler_type):
    # No -march=native: a wheel must run on any x86-64 (CPU dispatch is a separate concern).
    if compiler_type == "msvc":
        return ["/O2"]
    return ["-O3"]


def probe_openmp(compiler, compile_flags, link_flags):
    """Compile, link and run a tiny OpenMP program; return (ok, reason)."""
    tmp = tempfile.mkdtemp(prefix="fastconv-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=compile_flags)
        exe = os.path.join(tmp, "probe")
        compiler.link_executable(objs, exe, extra_postargs=link_flags)
        out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        if out.returncode != 0 or out.stdout.strip() != "1":
            return False, f"probe ran but reported {out.stdout.strip()!r} (exit {out.returncode})"
        return True, "probe compiled, linked and ran"
    except Exception as exc:  # any compiler/linker failure means "no OpenMP"
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """build_ext that decides OpenMP once, applies flags to every kernel, and records them."""

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        mode = os.environ.get("FASTCONV_OPENMP", "probe").strip().lower()
        use_omp, reason, compile_omp, link_omp = False, "disabled by FASTCONV_OPENMP", [], []
        if mode not in ("0", "no", "off", "false"):
            reasons = []
            for compile_omp, link_omp in openmp_candidates(ctype):
                use_omp, why = probe_openmp(self.compiler, compile_omp, link_omp)
                reasons.append(f"{' '.join(compile_omp)}: {why}")
                if use_omp:
                    break
            reason = "; ".join(reasons)
            if not use_omp and mode in ("1", "yes", "on", "true"):
                raise RuntimeError(f"FASTCONV_OPENMP=1 but the OpenMP probe failed: {reason}")
        if not use_omp:
            banner = "*" * 78
            print(
                f"\n{banner}\n* WARNING: building fastconv WITHOUT OpenMP; kernels will run on one "
                f"thread.\n* Reason: {reason}\n{banner}\n",
                file=sys.stderr,
            )
        cflags = optimisation_flags(ctype) + (compile_omp if use_omp else [])
        lflags = link_omp if use_omp else []
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags
            ext.extra_link_args = list(ext.extra_link_args or []) + lflags
        print(f"fastconv build: compiler={ctype} openmp={use_omp} ({reason}) flags={cflags}")
        self._write_build_info(ctype, use_omp, cflags, lflags)
        super().build_extensions()

    def _write_build_info(self, ctype, use_omp, cflags, lflags):
        """Record the build configuration for ``fastconv.config()``."""
        cc = self.compiler.compiler[0] if getattr(self.compiler, "compiler", None) else ctype
        info = {
            "compiler": cc,
            "compiler_type": ctype,
            "openmp": use_omp,
            "compile_args": cflags,
            "link_args": lflags,
            "numpy_build_version": np.__version__,
            "cython_version": cython_version,
            "python_build_version": sysconfig.get_python_version(),
        }
        text = f'"""Generated by setup.py at build time."""\n\nBUILD_INFO = {info!r}\n'
        target = os.path.join(self.build_lib, "fastconv")
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "_build_info.py"), "w") as f:
            f.write(text)

    def run(self):
        # setuptools builds into build_lib even for --inplace and then copies the extensions
        # into the source tree; the build record has to follow them.
        super().run()
        if self.inplace:
            shutil.copy(os.path.join(self.build_lib, "fastconv", "_build_info.py"),
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastconv"))


debug = os.environ.get("FASTCONV_DEBUG_CYTHON", "0") not in ("", "0")
directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": debug,
    "initializedcheck": debug,
    "nonecheck": False,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension(
        f"fastconv._kernels.{name}",
        [f"fastconv/_kernels/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
    )
    for name in KERNELS
]

setup(
    # force: the .c files depend on the directives (FASTCONV_DEBUG_CYTHON), which cythonize's
    # timestamp check does not see. Fresh .c files also make build_ext recompile every
    # extension, so a changed FASTCONV_OPENMP is never hidden by an old build in ./build.
    ext_modules=cythonize(extensions, compiler_directives=directives, force=True),
    cmdclass={"build_ext": BuildExt},
)
