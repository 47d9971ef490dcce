"""The build of the compiled ring core; everything else is in setup.cfg.

`shmbus._ringcore` is optional: where no C compiler works, `pip install` still succeeds
and shmbus runs on its pure-Python core (`shmbus --version` says which one runs).
"""

from setuptools import Extension, setup

# Added to Python's own flags (-O3 among them). Warnings are errors: the core writes
# shared memory other processes read, and a warning there is more often a bug than
# noise. C11 for <stdatomic.h>. No strict aliasing: the same mapping is read through
# bytes and through atomic words.
FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"]

setup(
    ext_modules=[
        Extension("shmbus._ringcore", ["shmbus/_ringcore.c"], extra_compile_args=FLAGS,
                  optional=True),
    ],
)
