from setuptools import find_packages, setup

setup(
    name="simsyft",
    version="0.1.0",
    description="PySyft 0.2's pointer API with real worker processes, ZeroMQ IPC and shared memory",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["simsyft", "simsyft.*"]),
    python_requires=">=3.11",
    # torch is pinned by the install commands (a CPU build); any 2.x with __torch_function__ works.
    # numpy: torch warns on every import without it (each worker's log, every CLI command).
    install_requires=["torch>=2.1", "pyzmq>=25", "psutil>=5.9", "numpy"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        "bench": ["matplotlib"],
        "examples": ["matplotlib", "tqdm"],  # examples/fedavg_hospitals.py: its plot and progress bar
        "ray": ["ray>=2.9"],  # [simulation] backend = "ray": workers as Ray actors (docs/cluster.md)
    },
    entry_points={
        "console_scripts": ["simsyft=simsyft.cli:main"],
        "pytest11": ["simsyft = simsyft.pytest_plugin"],  # the simsyft_sim fixtures for users' suites
    },
)
