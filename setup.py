"""The one C extension: the parser of plain numeric text, CSV blocks and JSON rows (numbers.py).

Optional: without a C compiler the install goes on without it and Arrow parses every block."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "berth_serving._numbers",
            ["serving/berth_serving/_numbers.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
