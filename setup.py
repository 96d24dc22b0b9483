import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION_FILE = Path(__file__).with_name("netvlad_port") / "version.py"
VERSION = re.search(r'__version__ = "(.+?)"', VERSION_FILE.read_text())[1]  # written once, in version.py

setup(
    name="netvlad-port",
    version=VERSION,
    description="Exact PyTorch port of the MATLAB/MatConvNet NetVLAD + SARE (deepIBL) place-recognition code",
    packages=find_packages(include=["netvlad_port", "netvlad_port.*"]),
    python_requires=">=3.10",
    # torch is pinned to a CPU-friendly range; see README "GPU install" for CUDA builds.
    install_requires=[
        "torch>=2.14,<2.15",
        "torchvision>=0.29,<0.30",
        "numpy>=1.24",
        "scipy>=1.11",
        "h5py>=3.8",
        "mat-io>=1.0.2",
        "safetensors>=0.4",
        "click>=8.1",
        "pillow>=10",
        "tqdm>=4.60",
        "faiss-cpu>=1.8",
        "matplotlib>=3.7",
        "pooch>=1.8",
    ],
    extras_require={
        "test": ["pytest>=7", "tensorboard>=2.14", "ruff>=0.6", "onnx>=1.16", "onnxruntime>=1.18"],
        "tensorboard": ["tensorboard>=2.14"],
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
    },
    entry_points={
        "console_scripts": ["netvlad-port=netvlad_port.cli:main"],
        # the built-in plug-in wings register as a third party's would (docs/extending.md#plug-ins)
        "netvlad_port.plugins": [
            "gcl = netvlad_port.plugins.gcl:register",
            "stml = netvlad_port.plugins.stml:register",
        ],
    },
)
