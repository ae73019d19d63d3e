"""Packaging for yurthub.

The project root is mapped as the package root (``package_dir={"": "."}``) so that an
editable install puts the checkout itself on ``sys.path``; that is what lets twistd find
``twisted/plugins/yurthub_plugin.py`` (setuptools' default editable finder hides it).
"""

from setuptools import find_packages, setup

setup(
    name="yurthub",
    version="0.1.0.dev0",
    description="Edge-node proxy for Kubernetes: streaming, caching, failover, autonomy",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    package_dir={"": "."},
    packages=find_packages(include=["yurthub", "yurthub.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["yurthub_plugin.py"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls,http2]>=24.3",
        "pyopenssl>=24",
        "service-identity>=24",
        "treq>=23.11",
        "pyyaml>=6",
        "cryptography>=42",
        "prometheus_client>=0.20",
        # llhttp's C parser for the proxy path's upstream answers (yurthub/upstream/http1.py).
        "httptools>=0.6",
    ],
    extras_require={
        "test": ["kubernetes>=29", "hypothesis>=6.100", "coverage>=7", "matplotlib>=3.8"],
        # python -m bench: its chart (nginx and wrk come from apt; see bench/README.md).
        "bench": ["matplotlib>=3.8"],
        "dev": ["mypy>=1.10", "mypy-zope>=1.0", "ruff>=0.5", "tox>=4", "types-PyYAML"],
    },
)
