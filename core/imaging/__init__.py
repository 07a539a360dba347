"""The image pipeline: load an input, encode what is uploaded, apply the returned mask, save.

    _pipeline  loading, the mask's fit and the composition (the overview is there)
    _prepare   the prepare stage: read and check a file, make its upload; no pixels kept
    _finish    the finish stage: check the file is unchanged, apply the result, write once
    _upload    encoding for upload: no metadata, within the service's limits
    _jpeg      a JPEG's own bytes minus its metadata segments (uploaded when they fit)
    _png       a PNG's own chunks minus metadata; the service's PNG with ICC and EXIF added
    _save      the output formats and the atomic save
    _modes     colour modes, ICC profiles, EXIF orientation
    _meta      the EXIF and PNG text an output keeps (no GPS location)
    _xmp       the XMP an output keeps: filtered as the EXIF, parsed with no DOCTYPE
    _deep      16-bit inputs kept 16-bit in PNG and TIFF outputs
    _match     is a cut-out made from this image? (finding the task of a lost submit)
    _foreground  foreground colours on soft edges (numpy; loaded on first use)
    _pillow    Pillow's warnings kept to bgremove's own image work (pillow_scope)

The modules are private; these are the public names.
"""

from bgremove.choices import OUTPUT_FORMATS as FORMATS
from bgremove.imaging._deep import DeepImage
from bgremove.imaging._finish import finish_file, load_source, result_alpha
from bgremove.imaging._jpeg import strip_jpeg_metadata
from bgremove.imaging._match import EXACT_SCORE, cutout_matches, cutout_mismatch, decode_image
from bgremove.imaging._modes import apply_orientation, undo_orientation
from bgremove.imaging._pillow import pillow_scope
from bgremove.imaging._pipeline import (
    NO_SUBJECT_WARNING,
    SourceImage,
    alpha_from_bytes,
    compose,
    compose_output,
    estimate_foreground,
    fit_alpha,
    has_subject,
    load_image,
    parse_color,
    source_from_raw,
)
from bgremove.imaging._prepare import prepare_file
from bgremove.imaging._save import extension_for, save_image
from bgremove.imaging._upload import encode_for_upload, sendable_original

__all__ = [
    "EXACT_SCORE", "FORMATS", "NO_SUBJECT_WARNING", "DeepImage", "SourceImage",
    "alpha_from_bytes", "apply_orientation", "compose", "compose_output", "cutout_matches",
    "cutout_mismatch", "decode_image",
    "encode_for_upload", "estimate_foreground", "extension_for", "finish_file", "fit_alpha",
    "has_subject", "load_image", "load_source", "parse_color", "pillow_scope", "prepare_file",
    "result_alpha",
    "save_image", "sendable_original", "source_from_raw", "strip_jpeg_metadata", "undo_orientation",
]
