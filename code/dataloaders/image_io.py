"""Reading and writing the image files of your own data and of predict.py.

Volumes: NIfTI and the other formats SimpleITK reads (.nii.gz, .nii, .nrrd, .mha). 2-D images: PNG, JPEG, TIFF,
BMP through Pillow. A file becomes a (D, H, W) array (a 2-D image or 2-D NIfTI: D = 1) plus a Geometry, which is
what it takes to write a result back in the source's own placement: ITK's spacing, origin and direction (a
viewer then lays the mask over the scan), or just the size for a picture. Anything unusable (NaN or infinite
voxels included) raises DataError naming the file; writes go through utils/safe_write.py, so no half-written
output is ever left.
"""
import gzip
import os
from dataclasses import dataclass

import numpy as np

from dataloaders.dataset import DataError
from utils.errors import one_line
from utils.safe_write import write_file

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
IMAGE_ENDINGS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
LOSSY_ENDINGS = (".jpg", ".jpeg", ".bmp")  # a mask of such an image is written as .png (lossless, 8-bit)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's "L" conversion, kept in float
NON_FINITE = "{path}: has NaN or infinite values; replace them (e.g. by the background intensity) and run again"


def file_ending(path):
    """The ending this module reads ('.nii.gz', '.png', ...), or None."""
    name = os.path.basename(path).lower()
    return next((e for e in VOLUME_ENDINGS + IMAGE_ENDINGS if name.endswith(e)), None)


def strip_ending(path):
    e = file_ending(path)
    name = os.path.basename(path)
    return name[:-len(e)] if e else name


@dataclass
class Geometry:
    """How one channel of a source file is laid out, in ITK's (x, y[, z]) convention."""
    ndim: int            # 2 or 3: the dimension of one channel of the source
    spacing: tuple       # mm per voxel (x, y[, z]); 1.0 for a picture
    origin: tuple
    direction: tuple     # row-major ndim x ndim cosines
    volume_file: bool    # True: a SimpleITK format; False: a picture (Pillow)

    def spacing_dhw(self):
        """Spacing per array axis (D, H, W), as the h5 files keep it (D = 1.0 for 2-D sources)."""
        return tuple(float(s) for s in self.spacing[::-1]) if self.ndim == 3 else (1.0,) + tuple(self.spacing[::-1])

    def h5_attrs(self):
        return {"spacing": list(self.spacing_dhw()), "origin": list(self.origin), "direction": list(self.direction)}


def geometry_from_attrs(attrs, depth):
    """The Geometry of a prepared h5 volume (read_geometry's dict); defaults where it carries none."""
    spacing = attrs.get("spacing") or [1.0, 1.0, 1.0]
    ndim = 3 if depth > 1 or len(attrs.get("origin") or [0, 0, 0]) == 3 else 2
    xyz = tuple(spacing[::-1]) if ndim == 3 else tuple(spacing[1:][::-1])
    origin = tuple(attrs.get("origin") or (0.0,) * ndim)
    direction = tuple(attrs.get("direction") or np.eye(ndim).ravel().tolist())
    return Geometry(ndim, xyz, origin, direction, True)


def _stored_bytes(path):
    """Bytes of the NIfTI stream (decompressed for .gz); a truncated or corrupt gzip raises OSError/EOFError."""
    if not path.lower().endswith(".gz"):
        return os.path.getsize(path)
    n = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            n += len(chunk)
    return n


def _nifti_bytes(reader):
    """The bytes a NIfTI file must hold by its header: data offset + voxels x bits per voxel (as stored, before
    ITK applies scl_slope / scl_inter, which turns integers into float32)."""
    dims = [int(reader.GetMetaData(f"dim[{k}]")) for k in range(1, int(reader.GetMetaData("dim[0]")) + 1)]
    return int(float(reader.GetMetaData("vox_offset"))) + int(np.prod(dims)) * int(reader.GetMetaData("bitpix")) // 8


def read_itk(path):
    """-> (SimpleITK image, array with ITK's reversed axes); DataError for an unreadable, truncated or non-finite
    file."""
    import SimpleITK as sitk

    nifti = path.lower().endswith((".nii", ".nii.gz"))
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        img = reader.Execute()
        array = sitk.GetArrayFromImage(img)
        # ITK zero-fills a truncated NIfTI without a word, so its size is checked against its header
        complete = not nifti or _stored_bytes(path) >= _nifti_bytes(reader)
    except (RuntimeError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read it ({one_line(e, last=True)}); is it a complete image file?")
    if not complete:
        raise DataError(f"{path}: the file is truncated; copy or download it again")
    if nifti and not _nifti_stored_finite(path):
        raise DataError(NON_FINITE.format(path=path))
    return img, array


def _nifti_stored_finite(path):
    """Whether a NIfTI file's stored voxels are all finite. ITK's NIfTI reader (niftilib's nifti_read_buffer)
    sets every NaN and infinite float voxel to 0 as it reads, so its array cannot tell; nibabel reads the values
    as stored (with scl_slope / scl_inter applied). Integer data has no such values."""
    import nibabel

    try:
        image = nibabel.load(path)
        if image.get_data_dtype().kind not in "fc":
            return True
        return bool(np.isfinite(np.asanyarray(image.dataobj)).all())
    except Exception as e:  # ITK read the file, so this is rare; whatever nibabel stumbles on, one line
        raise DataError(f"{path}: cannot read its voxel values ({one_line(e)}); is it a complete NIfTI file?")


def _pick_channel(path, channels, channel):
    """channels (K, ...) -> the one asked for; a multi-channel file needs --channel."""
    if channel is None:
        raise DataError(f"{path}: has {len(channels)} channels; choose one with --channel K (0..{len(channels) - 1})")
    if not 0 <= channel < len(channels):
        raise DataError(f"{path}: --channel {channel} does not exist (it has {len(channels)}: 0..{len(channels) - 1})")
    return channels[channel]


def _read_volume(path, channel):
    img, array = read_itk(path)
    dim, comps = img.GetDimension(), img.GetNumberOfComponentsPerPixel()
    if comps > 1:  # vector pixels (e.g. an RGB NIfTI): channels last in the array
        array = _pick_channel(path, np.moveaxis(array, -1, 0), channel)
    elif dim == 4:  # (K, D, H, W): the channels of MSD-style files
        array, dim = _pick_channel(path, array, channel), 3
    elif channel not in (None, 0):
        raise DataError(f"{path}: has one channel; --channel {channel} does not exist")
    if dim not in (2, 3) or array.ndim != dim:
        raise DataError(f"{path}: is {array.ndim}-D {array.shape}; a 2-D or 3-D image (or a 4-D one with "
                        f"--channel) is expected")
    k = dim
    direction = np.asarray(img.GetDirection(), np.float64).reshape(img.GetDimension(), -1)[:k, :k]
    geometry = Geometry(k, tuple(img.GetSpacing()[:k]), tuple(img.GetOrigin()[:k]), tuple(direction.ravel()), True)
    return (array[None] if dim == 2 else array), geometry


def _read_picture(path, as_mask, rgb_mask=False, channel=None):
    """-> ((1, H, W) or (1, H, W, 3) array, Geometry). Pictures are turned upright by their EXIF orientation,
    as viewers show them. A palette mask gives its indices, or its colours with rgb_mask. An image in colour
    becomes grey by luminance, or its colour `channel` (0 R, 1 G, 2 B) when one is asked for."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise DataError(f"{path}: a multi-page image; 3-D data belongs in NIfTI (one volume per file)")
            im.load()
            im = ImageOps.exif_transpose(im)
            palette_colours = im.mode == "P" and (rgb_mask or not as_mask)
            other_colours = im.mode in ("CMYK", "YCbCr", "LAB", "HSV")  # channels that are not RGB, image or mask
            array = np.array(im.convert("RGBA") if palette_colours else im.convert("RGB") if other_colours else im)
    except DataError:
        raise
    except Image.DecompressionBombError as e:  # not an OSError: Pillow refuses pictures above 2 x MAX_IMAGE_PIXELS
        raise DataError(f"{path}: the picture is beyond the reader's limit of {2 * Image.MAX_IMAGE_PIXELS} pixels "
                        f"({one_line(e)}); downscale or tile it")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as an image ({one_line(e)})")
    grey = array.ndim == 2 or array.shape[-1] <= 2  # L, I, F; LA
    if grey and channel not in (None, 0):  # as for a one-channel volume: a --channel that is not there
        raise DataError(f"{path}: has one channel (grey); --channel {channel} does not exist")
    if array.ndim == 3:  # RGB(A), LA: drop alpha; an image becomes grey, a mask keeps its colours
        array = array[..., :1] if grey else array[..., :3]
        if grey:
            array = array[..., 0]
        elif not as_mask and channel is not None:
            array = _pick_channel(path, np.moveaxis(array, -1, 0), channel)
        elif not as_mask:
            array = array.astype(np.float32) @ LUMA
    geometry = Geometry(2, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), False)
    return array[None], geometry


def read_image(path, channel=None):
    """An image file -> (float32 (D, H, W), Geometry). A 4-D or vector file needs `channel`; a colour picture
    takes it (0 R, 1 G, 2 B) or, without one, becomes grey by luminance."""
    e = file_ending(path)
    if e is None:
        raise DataError(f"{path}: unknown file type; use one of {', '.join(VOLUME_ENDINGS + IMAGE_ENDINGS)}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    array, geometry = _read_volume(path, channel) if e in VOLUME_ENDINGS else \
        _read_picture(path, as_mask=False, channel=channel)
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: pixel type {array.dtype} is not numeric")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise DataError(NON_FINITE.format(path=path))
    return array, geometry


def read_mask(path, colours=None):
    """A mask file -> (int64 (D, H, W) class ids, Geometry). Palette PNGs give their palette indices, grey files
    their values; `colours` (list of grey values or RGB triples, index = class id) maps values or colours to ids."""
    e = file_ending(path)
    if e is None or not os.path.isfile(path):
        raise DataError(f"{path}: not a readable mask file (found: {os.path.isfile(path)})")
    rgb = colours is not None and len(colours[0]) == 3
    array, geometry = _read_volume(path, None) if e in VOLUME_ENDINGS else _read_picture(path, True, rgb)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(NON_FINITE.format(path=path))
    if colours is None:
        if array.ndim == 4:
            raise DataError(f"{path}: a colour mask; give the colour of each class with --classes NAME=R,G,B ...")
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise DataError(f"{path}: mask values must be whole numbers (class ids), found {array.dtype} fractions")
        return array.astype(np.int32), geometry
    keys = array.reshape(-1, array.shape[-1]) if array.ndim == 4 else array.reshape(-1, 1)
    table = np.asarray(colours, np.int64).reshape(len(colours), -1)
    if table.shape[1] != keys.shape[1]:
        raise DataError(f"{path}: --classes gives {'RGB colours' if table.shape[1] == 3 else 'grey values'} but the "
                        f"mask is {'colour' if keys.shape[1] == 3 else 'grey'}")
    ids = np.full(len(keys), -1, np.int32)
    for c, value in enumerate(table):
        ids[np.all(keys == value, axis=1)] = c
    if (ids < 0).any():
        bad = keys[np.flatnonzero(ids < 0)[0]]
        raise DataError(f"{path}: value {tuple(int(v) for v in bad)} is not one of the --classes values")
    return ids.reshape(array.shape[:3]), geometry


def output_name(input_path):
    """The mask's file name for an input file: the same ending (a lossy picture's mask as .png)."""
    e = file_ending(input_path)
    return strip_ending(input_path) + (".png" if e in LOSSY_ENDINGS else e)


def itk_image(array, geometry):
    """(D, H, W) array -> SimpleITK image placed as `geometry` says (a 2-D source gets its single slice)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array if geometry.ndim == 3 else array[0])
    img.SetSpacing([float(s) for s in geometry.spacing])
    img.SetOrigin([float(s) for s in geometry.origin])
    img.SetDirection([float(s) for s in geometry.direction])
    return img


def write_like(path, array, geometry, palette=None, where=None):
    """Write a (D, H, W) uint8 mask (or float image, volumes only) with the source's geometry, through write_file;
    a volume is read back before it replaces anything (SimpleITK's NIfTI writer does not report a failed write).
    palette: a flat [r, g, b, ...] list; a PNG mask is then a palette image (its pixel values stay the ids).
    where: the flag that chose the folder, named in a failed write's fix."""
    import SimpleITK as sitk
    from PIL import Image

    ending = file_ending(path)
    if ending in VOLUME_ENDINGS:
        write_file(path, lambda tmp: sitk.WriteImage(itk_image(array, geometry), tmp, useCompression=True),
                   check=lambda tmp: read_itk(tmp)[1].shape == (array.shape if geometry.ndim == 3 else array.shape[1:]),
                   where=where)
        return
    picture = Image.fromarray(np.ascontiguousarray(array[0]))
    if palette is not None and ending == ".png":
        picture.putpalette(palette + [0] * (768 - len(palette)))  # 'L' -> 'P': the values become indices
    write_file(path, lambda tmp: picture.save(tmp, format=_PIL_FORMATS[ending]), where=where)


_PIL_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}
