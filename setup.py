"""The one C extension: the batch transform's parser of plain numeric lines (numbers.py).

Optional: without a C compiler the install goes on without it and Arrow parses every block."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "berth_serving.transform._numbers",
            ["serving/berth_serving/transform/_numbers.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
