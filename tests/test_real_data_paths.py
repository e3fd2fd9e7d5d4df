"""The real-dataset code paths, on small local copies: a TFDS `imagenet2012` in the on-disk format
tfds reads without TensorFlow, and a user's image folder converted by `maskgen prepare`."""

import io
import json
import os
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli, tiny_mae_config
from maskgen import config as config_lib
from maskgen import train as train_lib


def _photo_crops(count, seed):
    """Crops of varying size and aspect from scikit-learn's two sample photos (real images)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        label = i % 2
        photo = photos[label]
        h, w = int(rng.integers(30, 60)), int(rng.integers(30, 60))
        top, left = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
        out.append((photo[top:top + h, left:left + w], label))
    return out


@pytest.fixture(scope="module")
def local_imagenet(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")
    from PIL import Image

    def png(array):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    splits = {"train": _photo_crops(24, 0), "validation": _photo_crops(8, 1)}
    with tfds.core.registered.skip_registration():

        class Imagenet2012(tfds.core.GeneratorBasedBuilder):
            """A 32-image stand-in with imagenet2012's name, features and split names."""

            VERSION = tfds.core.Version("5.1.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(num_classes=2),
                }))

            def _split_generators(self, dl_manager):
                return {name: self._generate_examples(name) for name in splits}

            def _generate_examples(self, split):
                for i, (image, label) in enumerate(splits[split]):
                    yield i, {"image": png(image), "label": label}

    root = tmp_path_factory.mktemp("tfds")
    Imagenet2012(data_dir=str(root), file_format="array_record").download_and_prepare()
    assert "tensorflow" not in sys.modules
    return str(root)


def test_mae_imagenet_tiny_trains_on_local_tfds_copy(local_imagenet, tmp_path):
    config = config_lib.load_config_file(os.path.join(REPO, "experiments", "mae_imagenet.py") + ":size=tiny")
    config_lib.apply_overrides(config, [f"data.data_dir={local_imagenet}", "evals.probe.steps=50"])
    result = train_lib.train(config, str(tmp_path / "run"))
    assert set(result["evals"]) == {"probe", "reconstruction"}
    assert 0.0 <= result["evals"]["probe"].scalars["accuracy_model"] <= 1.0
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert os.listdir(tmp_path / "run" / "images")


def test_prepared_image_folder_trains(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    for i, (image, label) in enumerate(_photo_crops(40, 2)):
        os.makedirs(folder / f"class_{label}", exist_ok=True)
        Image.fromarray(image).save(folder / f"class_{label}" / f"{i}.png")
    (folder / "class_0" / "broken.png").write_bytes(b"not a png")
    out = str(tmp_path / "prepared")
    result = run_cli("prepare", "--source", "folder", "--input", str(folder), "--out", out, "--resolution", "16")
    assert result.returncode == 1 and "broken.png" in result.stderr and "--skip-bad" in result.stderr
    result = run_cli("prepare", "--source", "folder", "--input", str(folder), "--out", out, "--resolution", "16",
                     "--skip-bad", "--test-fraction", "0.25")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 1 unreadable file" in result.stdout and "broken.png" in result.stdout
    config = tiny_mae_config("data.name=array_record", f"data.data_dir={out}", "batch_size=8", steps=10)
    train_lib.train(config, str(tmp_path / "run"))
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "10")


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 4 samples give a singular 2048-d covariance
def test_tokenizer_and_maskgit_imagenet_tiny_on_local_tfds_copy(local_imagenet, tmp_path):
    """The paper-scale VQGAN config, shrunk: GAN + LeCam + R1 from step 5, on the TFDS stand-in;
    then its tokens, MaskGIT's paper config shrunk, and FID against ADM-style statistics."""
    config = config_lib.load_config_file(os.path.join(REPO, "experiments", "tokenizer_imagenet.py") + ":size=tiny")
    config_lib.apply_overrides(config, [f"data.data_dir={local_imagenet}"])
    result = train_lib.train(config, str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    assert [r["gan/active"] for r in rows[:5]] == [0.0] * 5 and rows[-1]["gan/active"] == 1.0
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["gan/r1"]) for r in rows)
    assert result["evals"]["reconstruction"].scalars["codebook_usage"] > 0
    # The paper-scale MaskGIT config, shrunk, on these tokens; FID on InceptionV3 features from a
    # weights file (random weights in the pytorch-fid layout) against an ADM reference batch (its mu/sigma).
    from maskgen.perception.inception import random_state_dict
    from maskgen.tokenize import tokenize_dataset

    tokens = str(tmp_path / "tokens")
    meta = tokenize_dataset(str(tmp_path / "run"), "tfds:imagenet2012", tokens, data_dir=local_imagenet)
    assert meta["token_shape"] == [16, 16] and meta["codebook_size"] == 1024
    weights, reference = str(tmp_path / "inception.npz"), str(tmp_path / "ref.npz")
    np.savez(weights, **random_state_dict(0))
    np.savez(reference, mu=np.zeros(2048), sigma=np.eye(2048))
    config = config_lib.load_config_file(os.path.join(REPO, "experiments", "maskgit_imagenet256.py")
                                         + f":size=tiny,tokens={tokens}")
    config_lib.apply_overrides(config, [f"evals.fid.inception_weights={weights}", f"evals.fid.adm_reference={reference}"])
    train_lib.train(config, str(tmp_path / "maskgit"))
    # FID as `maskgen eval` computes it (the evaluator has every=-1 in this config).
    _, results = train_lib.evaluate(config, str(tmp_path / "maskgit"))
    result = {"evals": results}
    fid = result["evals"]["fid"].scalars
    assert list(fid) == ["fid_inception_adm_ref"] and np.isfinite(fid["fid_inception_adm_ref"]), fid
    assert result["evals"]["fid"].images["samples"].shape[-1] == 3
