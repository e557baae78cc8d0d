"""The one thing pyproject.toml cannot say: vaereg's optional compiled fp16 kernel.

`optional=True`: with no C compiler the install still succeeds and vaereg rounds with numpy instead
(slower, same ids).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vaereg.identity._fp16kernel",
            sources=["vaereg/identity/_fp16kernel.c"],
            optional=True,
        )
    ]
)
