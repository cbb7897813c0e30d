"""Only the C extension lives here; everything else is in pyproject.toml.

hamachi._fastpath (the data plane's per-packet loop over OpenSSL's EVP API) is optional: when
it cannot be compiled (no gcc, no OpenSSL headers), the install goes on without it and hamachi
runs its pure-Python twins (hamachi/_accel.py).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any compiler failure means "pure Python"
            print(f"hamachi: C fast path not built ({e}); using the pure-Python twins")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            print(f"hamachi: C fast path not built ({e}); using the pure-Python twins")


setup(
    ext_modules=[Extension("hamachi._fastpath", ["hamachi/_fastpath.c"], libraries=["crypto"],
                           extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"])],
    cmdclass={"build_ext": OptionalBuildExt},
)
