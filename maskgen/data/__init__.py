"""Data for maskgen: the source registry, field specs, input pipelines, record formats, preparation.

A source yields dicts of named numpy arrays that its `source_info(...)["fields"]` specs describe
(maskgen.data.specs): images, token grids, text ids, latents, audio, optional labels. See docs/data.md.
"""

from maskgen.data.pipeline import (Preprocess, data_options, eval_batches, make_preprocess, preprocess_from_config,
                                   train_dataset)
from maskgen.data.prepare import BadImageError, prepare_digits, prepare_image_folder
from maskgen.data.records import decode_example, encode_example, read_metadata, write_shards
from maskgen.data.sources import (VALID_NAMES, DataSource, make_source, register_source, source_info,
                                  source_names)
from maskgen.data.specs import (AudioSpec, ImageSpec, LabelSpec, LatentSpec, TextSpec, TokenSpec, spec_from_json,
                                spec_to_json)

__all__ = [
    "AudioSpec",
    "BadImageError",
    "DataSource",
    "ImageSpec",
    "LabelSpec",
    "LatentSpec",
    "Preprocess",
    "TextSpec",
    "TokenSpec",
    "VALID_NAMES",
    "data_options",
    "decode_example",
    "encode_example",
    "eval_batches",
    "make_preprocess",
    "make_source",
    "prepare_digits",
    "prepare_image_folder",
    "preprocess_from_config",
    "read_metadata",
    "register_source",
    "source_info",
    "source_names",
    "spec_from_json",
    "spec_to_json",
    "train_dataset",
    "write_shards",
]
