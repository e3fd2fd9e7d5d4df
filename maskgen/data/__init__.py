"""Data for maskgen: example sources for grain, record format, and dataset preparation.

Every example is {"image": uint8 [H, W, C], "label": np.int32 scalar}. See docs/data.md.
"""

from maskgen.data.prepare import BadImageError, prepare_digits, prepare_image_folder
from maskgen.data.records import decode_example, encode_example, read_metadata, write_shards
from maskgen.data.sources import VALID_NAMES, make_source, source_info

__all__ = [
    "BadImageError",
    "VALID_NAMES",
    "decode_example",
    "encode_example",
    "make_source",
    "prepare_digits",
    "prepare_image_folder",
    "read_metadata",
    "source_info",
    "write_shards",
]
