"""Install script for the PartCATSeg / CAT-Seg research framework."""
from setuptools import find_packages, setup

setup(
    name="partcatseg",
    version="0.1.0",
    description="Open-vocabulary part segmentation: PartCATSeg (CVPR 2025) and CAT-Seg (CVPR 2024), "
    "detectron2-compatible, CPU and GPU.",
    python_requires=">=3.9",
    packages=find_packages(include=["partcatseg", "partcatseg.*"]),
    include_package_data=True,
    package_data={"partcatseg": ["vocab/data/*.json", "vocab/data/*.txt"]},
    install_requires=[
        "torch>=2.6",
        "torchvision>=0.21",
        "open_clip_torch>=2.24",
        "timm>=1.0",
        "einops>=0.6",
        "fvcore>=0.1.5.post20221221",
        "iopath>=0.1.9",
        "numpy>=1.23",
        "Pillow>=9.0",
        "opencv-python-headless>=4.6",
        "pycocotools>=2.0.6",
        "gdown>=4.7",
        "huggingface_hub>=0.20",
        "transformers>=4.46",  # CLIPSeg (PartCLIPSeg); tested with 4.46, 4.57 and 5.x
        "tqdm>=4.60",
        "tabulate>=0.9",
        "tensorboard>=2.12",
        "scikit-image>=0.21",
        "safetensors>=0.4",
        "colorcet>=3.0",
    ],
    extras_require={
        # the web app (partcatseg-app); tested with gradio 5.49.1 and 6.31.0 (gradio 5.0.x does not import
        # next to huggingface_hub >= 1). gradio brings fastapi/uvicorn/pandas and caps Pillow below 13.
        "app": ["gradio>=5.0"],
        # tests: the app's client test (gradio_client comes with gradio) and browser test (selenium +
        # Debian's chromium/chromium-driver; skipped without them)
        "dev": ["pytest>=7.0", "gradio>=5.0", "selenium>=4.10"],
    },
    entry_points={
        "console_scripts": [
            "partcatseg-demo=partcatseg.cli.demo:main",
            "partcatseg-benchmark=partcatseg.cli.benchmark:main",
            "partcatseg-download-weights=partcatseg.cli.download_weights:main",
            "partcatseg-convert-checkpoint=partcatseg.cli.convert_checkpoint:main",
            "partcatseg-push-to-hub=partcatseg.cli.push_to_hub:main",
            "partcatseg-app=partcatseg.cli.app:main",
        ],
    },
)
