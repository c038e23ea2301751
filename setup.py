"""keras-litenext: lightweight medical image segmentation in Keras 3, from training to int8 TFLite."""
import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "keras_litenext" / "version.py").read_text()).group(1)

setup(
    name="keras-litenext",
    version=VERSION,
    description="LiteNeXt and other lightweight medical segmentation models for Keras 3, with an int8 TFLite path.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["keras_litenext", "keras_litenext.*"]),
    package_data={"keras_litenext": ["assets/**/*", "presets/**/*", "web/*.json", "web/page/*"]},
    include_package_data=True,
    entry_points={"console_scripts": ["keras-litenext = keras_litenext.cli:main"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.13,<4",
        "numpy>=1.26",
        "opencv-python-headless>=4.8,<6",
        "tensorboard>=2.20",  # TF 2.21 no longer pulls it; runs write TensorBoard logs
        "matplotlib>=3.7",  # curves.png of a run
        "scipy>=1.10",  # exact distance transforms of the surface metrics (HD95, ASSD)
        "ai-edge-litert>=2.3,<3",  # LiteRT: runs, scores and times the .tflite files; its model schema edits them
    ],
    extras_require={
        "litert": [],  # ai-edge-litert is a base dependency now; the extra stays so that old install lines work
        # To check files with MediaPipe in Python (keras_litenext.export.metadata: read_metadata,
        # check_mediapipe); writing the metadata needs no MediaPipe. Its wheel declares
        # opencv-contrib-python, a second (non-headless) copy of cv2: prefer `pip install --no-deps
        # "mediapipe==1.2.3"` (docs/export.md). Not in `test` or `dev` for that reason; .ci/run installs it so.
        "mediapipe": ["mediapipe==1.2.3"],
        "jax": ["jax>=0.4.30"],
        # keras-litenext web --check: drives the system's Chromium (never downloads a browser)
        "web": ["playwright==1.65.3"],
        # DICOM and NIfTI datasets (keras_litenext.medical_io)
        "dicom": ["pydicom>=3,<4"],
        "nifti": ["nibabel>=5,<6"],
        "medical": ["pydicom>=3,<4", "nibabel>=5,<6"],
        # keras-litenext predict --runner: the Apache Beam pipeline (keras_litenext.inference.beam, docs/beam.md);
        # gcp: Dataflow and gs://. 2.78.0 is the newest Beam; it needs protobuf < 7 (TensorFlow 2.21 takes
        # 6.31.1 up to 8) and pulls pyarrow (--format parquet)
        "beam": ["apache-beam[gcp]==2.78.0"],
        "test": ["pytest>=8", "pytest-xdist>=3", "build>=1", "jax>=0.4.30", "hypothesis>=6", "scikit-learn>=1.3",
                 "pydicom>=3,<4", "nibabel>=5,<6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26", "playwright==1.65.3",
                 "apache-beam==2.78.0"],
        # the documentation site (mkdocs.yml, docs/; tests/test_docs.py builds it)
        "docs": ["mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],
        "dev": ["pytest>=8", "jax>=0.4.30", "ruff", "hypothesis>=6", "pydicom>=3,<4", "nibabel>=5,<6"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
