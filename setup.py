from setuptools import find_packages, setup

setup(
    name="netvlad-port",
    version="0.1.0",
    description="Exact PyTorch port of the MATLAB/MatConvNet NetVLAD + SARE (deepIBL) place-recognition code",
    packages=find_packages(include=["netvlad_port", "netvlad_port.*"]),
    python_requires=">=3.10",
    # torch is pinned to a CPU-friendly range; see README "GPU install" for CUDA builds.
    install_requires=[
        "torch>=2.13,<2.14",
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
    entry_points={"console_scripts": ["netvlad-port=netvlad_port.cli:main"]},
)
