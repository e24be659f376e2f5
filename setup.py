"""Install with `pip install -e ".[dev]"` (see README.md)."""

from setuptools import find_packages, setup

install_requires = [
    # torch 2.x with SDPA; torchvision for image transforms. Not pinned so a CUDA user keeps their build.
    "torch>=2.1",
    "torchvision>=0.16",
    # The pipeline and CapFace build on diffusers' UNet/ControlNet blocks and its single-file
    # loaders; 0.42 is the version the architecture and key maps were checked against.
    "diffusers>=0.42,<0.43",
    "transformers>=4.46",
    "accelerate>=0.30",
    "safetensors>=0.4",
    "omegaconf>=2.3",
    "einops>=0.7",
    "tqdm>=4.66",
    "pillow>=10",
    "pyyaml>=6",
    "scipy>=1.10",
    "scikit-image>=0.22",
    # mediapipe 0.10.21 is the last official release that still ships mp.solutions with its
    # .tflite face detection and 478-point face mesh inside the wheel (works offline). It pins
    # numpy<2; we keep the official Google build over the numpy-2 community rebuild
    # (mediapipe-numpy2), so numpy stays below 2 here.
    "mediapipe==0.10.21",
    "numpy>=1.24,<2",
    # dlib's 128-d face recogniser, 68-point landmarks and detectors, offline. The model files
    # ship in face_recognition_models, whose import needs pkg_resources (setuptools<81); we
    # locate its .dat files on disk instead of importing it, but keep setuptools<81 so the
    # package installs and imports cleanly for users who do.
    "dlib-bin>=19.24",
    "face_recognition_models==0.3.0",
    "setuptools<81",
    "onnxruntime>=1.17",
    # FaceNet's input exactly as the published CapHuman code crops it: facenet-pytorch's MTCNN,
    # whose P/R/O-Net weights ship inside the wheel (offline). 2.5.3 is the official code's own pin;
    # it needs only numpy, pillow, requests and torchvision (no torch/numpy pins of its own).
    "facenet-pytorch==2.5.3",
    "lightning>=2.2",
    "tensorboard>=2.14",
    "matplotlib>=3.7",
    "huggingface_hub>=0.23",
    # `caphuman demo`. gradio 6 installs with numpy<2 (checked with pip --dry-run: it changes no
    # torch/diffusers/transformers/numpy/huggingface_hub version); it wants pillow<13.
    "gradio>=6,<7",
    # `caphuman sweep` writes MP4 through the ffmpeg binary this wheel ships (offline); GIF needs only Pillow.
    "imageio-ffmpeg>=0.5",
]

extras_require = {
    "dev": [
        "pytest>=8",
        "pytest-timeout>=2.2",
        # an independent OpenGL rasteriser (EGL via Mesa llvmpipe, headless) to check our renderer
        "moderngl>=5.8",
        # export tiny torch models to ONNX to test the ArcFace-ONNX loader
        "onnx>=1.15",
        # lint + format (pyproject.toml [tool.ruff]); pinned because ruff's formatter and rules
        # change between releases and CI must judge with the version contributors format with.
        "ruff==0.17.6",
        # runs the hooks of .pre-commit-config.yaml (local hooks: the ruff above, no downloads),
        # on each commit after `pre-commit install`, and in .ci/run over every file
        "pre-commit>=3.6",
        # drive the demo in headless Chromium; the browser is Debian's `chromium` package
        # (.ci/run installs it), never `playwright install`
        "playwright>=1.40",
    ],
    # Optional CUDA speed-ups; never required.
    "cuda": ["xformers"],
}

# Top-level data folders installed inside the package (see caphuman/_resources.py).
SHIPPED_FOLDERS = {"caphuman._shipped.configs": "configs", "caphuman._shipped.checkpoints": "checkpoints"}

setup(
    name="caphuman",
    version="0.1.0",
    description="CapHuman (CVPR 2024) rebuilt: one reference photo + 3D head control -> new photos of that person.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The shipped configs and weights manifest stay at the repository top level (where users and
    # the README name them); a regular install carries them as package data under
    # caphuman/_shipped/, found by caphuman._resources.shipped_root().
    packages=find_packages(include=["caphuman", "caphuman.*"]) + list(SHIPPED_FOLDERS),
    package_dir=SHIPPED_FOLDERS,
    package_data={"caphuman._shipped.configs": ["*.yaml", "benchmarks/*.yaml"], "caphuman._shipped.checkpoints": ["manifest.yaml"]},
    install_requires=install_requires,
    extras_require=extras_require,
    entry_points={"console_scripts": ["caphuman=caphuman.cli:main"]},
)
