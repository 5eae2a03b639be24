"""Nothing lost, nothing silently wrong: every file written for a person is whole or not there (the previous one
intact), a failed write (full disk, read-only folder) or a second Ctrl-C ends in one line, and a NIfTI scan with
NaN or infinite voxels is refused.

A full disk is simulated where the bytes go: a file object whose write raises ENOSPC (what the OS does), for the
writers that go through Python's open; SimpleITK's NIfTI writer, which reports nothing on a full disk and leaves
a short file, by that behaviour. Where this process may mount a small tmpfs (root), the real thing is run too.
"""
import builtins
import errno
import io
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import predict
import prepare_data
import test_ACDC
import train_fully_supervised_ACDC
from conftest import TEST_GPU
from dataloaders import image_io, official_sources
from dataloaders.dataset import DataError, read_case
from dataloaders.image_io import Geometry, read_image, read_mask, write_like
from dataloaders.layout import write_h5
from own_data_fixtures import make_nnunet, nifti
from utils import checkpoint as ckpt_mod
from utils.config import run_main
from utils.errors import CheckpointError, WriteError
from utils.progress import plot_progress, write_csv
from utils.trainer import TrainingRun, _StopOnSignal, write_image_grid

CODE = os.path.join(os.path.dirname(__file__), "..", "code")
NO_SPACE = os.strerror(errno.ENOSPC)


def _sup(root, snap, *extra, iters=4):
    return ["--root_path", root, "--patch_size", "32", "32", "--batch_size", "4", "--max_iterations", str(iters),
            "--val_interval", str(iters), "--gpu", TEST_GPU, "--snapshot_dir", snap, *extra]


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    """A finished 2-iteration supervised run on the tiny dataset -> its best-model checkpoint."""
    snap = str(tmp_path_factory.mktemp("faults") / "sup")
    train_fully_supervised_ACDC.main(_sup(tiny_root, snap, iters=2))
    return os.path.join(snap, "unet_best_model.pth")


def _leftovers(folder):
    """Temporary files or folders a write left behind."""
    return [n for n in os.listdir(folder) if n.startswith(".tmp-") or ".tmp-" in n]


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(("error:", "interrupted:"))]
    assert len(errors) == 1, err
    return errors[0]


# ------------------------------------------------------------------------- a disk that fills up under a write
def _name_of(file):
    if isinstance(file, int):  # os.fdopen(fd): the name the descriptor was opened with
        try:
            return os.path.basename(os.readlink(f"/proc/self/fd/{file}"))
        except OSError:
            return ""
    return os.path.basename(os.fsdecode(file)) if isinstance(file, (str, bytes, os.PathLike)) else ""


class _Watched:
    """A file object whose every write first asks on_write(name, bytes written so far, bytes to write) how many
    the disk takes (None: all). Fewer: that part is written, then OSError ENOSPC, as the OS reports a full disk.
    on_write may also signal (the user presses Ctrl-C at that moment)."""

    def __init__(self, f, name, on_write):
        self._f, self._name, self._on_write, self._written = f, name, on_write, 0

    def write(self, data):
        size = len(data) if isinstance(data, str) else memoryview(data).nbytes
        room = self._on_write(self._name, self._written, size)
        if room is not None and room < size:
            self._f.write(data[:room] if isinstance(data, str) else memoryview(data).cast("B")[:room])
            self._f.flush()
            self._written += room
            raise OSError(errno.ENOSPC, NO_SPACE)
        n = self._f.write(data)
        self._written += size
        return n

    def __getattr__(self, attr):
        return getattr(self._f, attr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _watch_writes(monkeypatch, match, on_write):
    """Every file opened for writing whose name passes match(name) is _Watched (builtins.open, io.open and
    through it os.fdopen, pathlib, zipfile)."""
    real = io.open

    def watched_open(file, mode="r", *a, **k):
        f = real(file, mode, *a, **k)
        name = _name_of(file)
        return _Watched(f, name, on_write) if any(c in mode for c in "wax+") and match(name) else f

    monkeypatch.setattr(builtins, "open", watched_open)
    monkeypatch.setattr(io, "open", watched_open)


def _full_after(limit):
    """A disk with room for `limit` more bytes of each file."""
    return lambda name, written, size: max(0, limit - written)


def _temporary(name):
    return name.startswith(".tmp-")


def _picture():
    return Geometry(2, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), False)


WRITERS = {  # name -> (file name, write(path, version)): every kind of file the project writes for a person
    "checkpoint": ("last.pth", lambda p, v: ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "v": v,
                                                                   "w": torch.full((4000,), float(v))}, p)),
    "csv table": ("val_curve.csv", lambda p, v: write_csv(p, [{"iteration": i, "dice": v / 10} for i in range(200)])),
    "prepared h5": ("case.h5", lambda p, v: write_h5(p, np.full((3, 40, 40), v / 10, np.float32),
                                                     np.full((3, 40, 40), v, np.uint8), (8.0, 1.5, 1.5))),
    "figure": ("progress.png", lambda p, v: plot_progress(p, [{"iteration": 1, "loss": 1.0}, {"iteration": 2,
                                                                                               "loss": v}],
                                                          [{"iteration": 2, "dice": v / 10}])),
    "palette mask": ("mask.png", lambda p, v: write_like(p, np.full((1, 30, 40), v, np.uint8), _picture(),
                                                         palette=[0, 0, 0, 255, 0, 0])),
    "probabilities": ("scan_probabilities.npz", lambda p, v: predict.write_probabilities(
        p, np.full((2, 3, 20, 20), v / 10, np.float32), ["BG", "LV"])),
    # --save_images (noise: a PNG of a few kB, so that "part-way" is inside it)
    "training image grid": ("train_image_gt_pred_10.png", lambda p, v: write_image_grid(
        p, np.random.default_rng(v).random((3, 40, 60)))),
}


@pytest.mark.parametrize("after", [0, 200], ids=["at-once", "part-way"])
@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_writer_on_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch, kind, after):
    name, write = WRITERS[kind]
    path = str(tmp_path / name)
    write(path, 1)
    before = open(path, "rb").read()
    _watch_writes(monkeypatch, _temporary, _full_after(after))
    with pytest.raises(WriteError) as e:
        write(path, 2)
    monkeypatch.undo()
    assert str(e.value) == (f"{path}: cannot be written ({NO_SPACE}); free disk space"
                            f"{' or choose another --output' if kind == 'probabilities' else ''} and run again "
                            f"(the previous file is intact)")
    assert open(path, "rb").read() == before and _leftovers(tmp_path) == []
    write(path, 3)  # space again: the next write goes through
    assert open(path, "rb").read() != before


def test_save_images_onto_a_full_disk_is_a_write_error_and_leaves_no_cut_png(tmp_path, monkeypatch):
    """TrainingRun.log_images with --save_images (was: cv2.imwrite's False ignored, a cut or missing PNG)."""
    run = SimpleNamespace(args=SimpleNamespace(save_images=True), snapshot=str(tmp_path),
                          info=SimpleNamespace(class_names=["BG", "RV", "Myo", "LV"]),
                          writer=SimpleNamespace(add_image=lambda *a: None))
    panels = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    TrainingRun.log_images(run, "train/image_gt_pred", panels, 9)
    images = tmp_path / "images"
    assert os.listdir(images) == ["train_image_gt_pred_10.png"]
    _watch_writes(monkeypatch, _temporary, _full_after(1000))
    with pytest.raises(WriteError) as e:
        TrainingRun.log_images(run, "train/image_gt_pred", panels, 19)
    monkeypatch.undo()
    assert str(e.value) == (f"{images / 'train_image_gt_pred_20.png'}: cannot be written ({NO_SPACE}); free disk "
                            f"space and run again")
    assert os.listdir(images) == ["train_image_gt_pred_10.png"]  # no cut PNG, no temporary file


# ---------------------------------------------------------------------------------- 1. NIfTI onto a full disk
def _itk_on_a_full_disk(monkeypatch, keep):
    """SimpleITK's NIfTI writer on a full disk: no error, the file cut to the fraction `keep` of its bytes; the
    disk has no space."""
    real_write, real_statvfs = sitk.WriteImage, os.statvfs

    def write(image, path, *a, **k):
        real_write(image, path, *a, **k)
        os.truncate(path, int(keep * os.path.getsize(path)))

    def statvfs(path):
        s = real_statvfs(path)
        return os.statvfs_result((s.f_bsize, s.f_frsize, s.f_blocks, 0, 0, s.f_files, s.f_ffree, s.f_favail,
                                  s.f_flag, s.f_namemax))

    monkeypatch.setattr(sitk, "WriteImage", write)
    monkeypatch.setattr(os, "statvfs", statvfs)


@pytest.mark.parametrize("keep", [0, 0.5], ids=["empty", "truncated"])
def test_predict_onto_a_full_disk_stops_with_one_line_and_no_mask(trained, tmp_path, monkeypatch, capsys, keep):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    nifti(str(inputs / "good3d.nii.gz"), np.random.default_rng(0).random((6, 64, 64)).astype(np.float32))
    argv = ["--checkpoint", trained, "--input", str(inputs), "--output", str(out), "--gpu", "-1"]
    predict.main(argv)
    before = (out / "good3d.nii.gz").read_bytes()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / "good3d.nii.gz"))).shape == (6, 64, 64)
    capsys.readouterr()
    _itk_on_a_full_disk(monkeypatch, keep)
    with pytest.raises(SystemExit) as e:
        run_main(predict.main, argv)
    monkeypatch.undo()
    assert e.value.code == 2
    assert _one_error_line(capsys) == (f"error: {out / 'good3d.nii.gz'}: cannot be written ({NO_SPACE}); free disk "
                                       f"space or choose another --output and run again (the previous file is intact)")
    assert (out / "good3d.nii.gz").read_bytes() == before and _leftovers(out) == []


def test_test_acdc_save_nifti_onto_a_full_disk_writes_no_empty_file(trained, tiny_root, monkeypatch):
    folder = os.path.join(os.path.dirname(trained), "predictions_val")
    _itk_on_a_full_disk(monkeypatch, 0)
    with pytest.raises(WriteError, match=rf"predictions_val/\w+_img.nii.gz: cannot be written \({NO_SPACE}\)"):
        test_ACDC.main(["--checkpoint", trained, "--root_path", tiny_root, "--split", "val", "--save_nifti",
                        "--gpu", TEST_GPU])
    assert os.listdir(folder) == []


# --------------------------------------------------------------------------- 2. NaN voxels in a NIfTI scan
@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_scan_with_nan_or_infinite_voxels_is_refused_in_every_format(tmp_path, ending, bad):
    array = np.random.default_rng(1).random((3, 20, 24)).astype(np.float32)
    array[1, 5, 7] = bad
    path = str(tmp_path / f"scan{ending}")
    nifti(path, array)
    with pytest.raises(DataError, match=r"scan\.[a-z.]+: has NaN or infinite values; replace them"):
        read_image(path)
    with pytest.raises(DataError, match="has NaN or infinite values"):  # in a mask, NaN read as 0 is background
        read_mask(path)


def test_predict_and_prepare_refuse_a_nifti_with_a_nan_voxel(trained, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    scan = np.random.default_rng(2).random((3, 40, 40)).astype(np.float32)
    nifti(str(inputs / "a_good.nii.gz"), scan)
    scan[2, 3, 4] = np.nan
    nifti(str(inputs / "b_nan.nii.gz"), scan)
    with pytest.raises(DataError, match=r"b_nan.nii.gz: has NaN or infinite values"):
        predict.main(["--checkpoint", trained, "--input", str(inputs), "--output", str(out), "--gpu", "-1"])
    assert not out.exists()  # nothing was segmented, the good scan before it neither
    raw = tmp_path / "raw"
    make_nnunet(str(raw), n_cases=4, unlabeled=())
    image = sitk.ReadImage(str(raw / "imagesTr" / "case02_0000.nii.gz"), sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(image)
    values[1, 10, 10] = np.nan
    nifti(str(raw / "imagesTr" / "case02_0000.nii.gz"), values, image.GetSpacing(), image.GetOrigin(),
          image.GetDirection())
    with pytest.raises(DataError, match=r"case02_0000.nii.gz: has NaN or infinite values"):
        prepare_data.main(["nnunet", "--input", str(raw), "--output", str(tmp_path / "prep")])
    assert not (tmp_path / "prep").exists() and _leftovers(tmp_path) == []


# ------------------------------------------------------------- 7. last.pth: a full disk, a second Ctrl-C
def _saves_of_last_pth(monkeypatch, on_save):
    """on_save(k, written): called at each write into the k-th save of last.pth (1-based; each save has its own
    temporary file); it returns the bytes the disk takes, as _Watched's on_write."""
    saves = []

    def on_write(name, written, size):
        if name not in saves:
            saves.append(name)
        return on_save(len(saves), written)

    _watch_writes(monkeypatch, lambda n: _temporary(n) and "last.pth" in n, on_write)


def test_full_disk_while_saving_last_pth_is_one_line_and_keeps_the_previous_one(tiny_root, tmp_path, monkeypatch,
                                                                                capsys):
    snap = str(tmp_path / "run")

    def on_save(k, written):
        return max(0, 1000 - written) if k >= 2 else None  # the disk fills up part-way through the second save

    _saves_of_last_pth(monkeypatch, on_save)
    with pytest.raises(SystemExit) as e:
        run_main(train_fully_supervised_ACDC.main, _sup(tiny_root, snap, "--checkpoint_interval", "1"))
    monkeypatch.undo()
    assert e.value.code == 2
    assert _one_error_line(capsys) == (f"error: {os.path.join(snap, 'last.pth')}: cannot be written ({NO_SPACE}); "
                                       f"free disk space and run again (the previous file is intact)")
    assert ckpt_mod.load_checkpoint(os.path.join(snap, "last.pth"))["iteration"] == 1 and _leftovers(snap) == []


def test_second_ctrl_c_while_last_pth_is_written_stops_at_once(tiny_root, tmp_path, monkeypatch, capsys):
    snap, pressed = str(tmp_path / "run"), set()
    # Ctrl-C as the save at iteration 2 starts; again part-way through the save the first one asks for, inside
    # torch's zip writer (where a real Ctrl-C lands: writing the tensors is most of a save)
    at = {2: 0, 3: 1000}  # save -> bytes into it

    def on_save(k, written):
        if k in at and written >= at[k] and k not in pressed:
            pressed.add(k)
            signal.raise_signal(signal.SIGINT)

    _saves_of_last_pth(monkeypatch, on_save)
    with pytest.raises(SystemExit) as e:
        run_main(train_fully_supervised_ACDC.main, _sup(tiny_root, snap, "--checkpoint_interval", "1", iters=10))
    monkeypatch.undo()
    assert e.value.code == 130
    assert _one_error_line(capsys).startswith("interrupted: stopped at once (second Ctrl-C)")
    assert ckpt_mod.load_checkpoint(os.path.join(snap, "last.pth"))["iteration"] == 2 and _leftovers(snap) == []


def test_second_ctrl_c_turned_into_another_error_by_c_code_still_stops_at_once():
    with pytest.raises(KeyboardInterrupt):
        with _StopOnSignal():
            signal.raise_signal(signal.SIGINT)  # the first: finish the step
            try:
                signal.raise_signal(signal.SIGINT)  # the second lands inside a C library, which reports its own error
            except KeyboardInterrupt:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


# ----------------------------------------------------------------------- 8. prepare_data onto a full disk
def test_prepare_data_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    make_nnunet(str(raw), n_cases=6, unlabeled=())
    h5_files = []

    def on_write(name, written, size):
        if name not in h5_files:
            h5_files.append(name)
        return max(0, 500 - written) if len(h5_files) >= 3 else None  # the disk fills up in the third h5 file

    _watch_writes(monkeypatch, lambda n: _temporary(n) and n.endswith(".h5"), on_write)
    with pytest.raises(SystemExit) as e:
        run_main(prepare_data.main, ["nnunet", "--input", str(raw), "--output", str(tmp_path / "prep")])
    monkeypatch.undo()
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: ") and line.endswith(f".h5: cannot be written ({NO_SPACE}); free disk space or "
                                                        f"choose another --output and run again")
    assert len(h5_files) == 3 and not (tmp_path / "prep").exists() and _leftovers(tmp_path) == []


# -------------------------------------------------------------------- 9. predict into a read-only folder
@pytest.fixture
def read_only_folder(tmp_path):
    """An existing folder nothing can be written into: chmod for a user, a read-only tmpfs for root (whom chmod
    does not stop); skipped where neither works."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                                                    str(folder)], capture_output=True).returncode:
        pytest.skip("root, and no read-only tmpfs can be mounted here")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_predict_into_a_read_only_folder_is_one_line(trained, tmp_path, read_only_folder, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    nifti(str(inputs / "scan.nii.gz"), np.random.default_rng(3).random((3, 40, 40)).astype(np.float32))
    with pytest.raises(SystemExit) as e:
        run_main(predict.main, ["--checkpoint", trained, "--input", str(inputs), "--output", str(read_only_folder),
                                "--gpu", "-1"])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {read_only_folder / 'scan.nii.gz'}: cannot be written (")
    assert line.endswith("); make the folder writable or choose another --output")
    assert os.listdir(read_only_folder) == []


# ------------------------------------------------------------------------------- the real disk, where allowed
@pytest.fixture
def small_disk(tmp_path):
    """A real, small file system (a 256 KiB tmpfs); it needs root and a kernel that lets this process mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                                   capture_output=True).returncode:
        pytest.skip("no tmpfs can be mounted here (needs root); the simulated full disks above cover it")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(CODE, script), *args], capture_output=True, text=True)


def test_on_a_real_full_disk_predict_and_prepare_data_stop_with_one_line(trained, tmp_path, small_disk):
    raw = tmp_path / "raw"
    make_nnunet(str(raw), n_cases=6, unlabeled=(), size=(96, 96), depth=8)
    r = _cli("prepare_data.py", "nnunet", "--input", str(raw), "--output", str(small_disk / "prep"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr  # (was: h5py errors, then a segfault)
    assert r.stderr.strip().splitlines()[-1].endswith(f": cannot be written ({NO_SPACE}); free disk space or choose "
                                                      f"another --output and run again")
    assert os.listdir(small_disk) == []
    with open(small_disk / "filler", "wb", buffering=0) as f:  # the rest of the disk taken
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    inputs = tmp_path / "in"
    inputs.mkdir()
    nifti(str(inputs / "good3d.nii.gz"), np.random.default_rng(4).random((6, 64, 64)).astype(np.float32))
    r = _cli("predict.py", "--checkpoint", trained, "--input", str(inputs), "--output", str(small_disk), "--gpu", "-1")
    assert r.returncode == 2 and "wrote" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"error: {small_disk / 'good3d.nii.gz'}: cannot be written "
                                                 f"({NO_SPACE}); free disk space or choose another --output and run "
                                                 f"again")
    assert os.listdir(small_disk) == ["filler"]


# ------------------------------------------------------------------- 11. refusals whose message is empty
def test_random_bytes_as_last_pth_are_refused_with_one_line(tmp_path):
    path = str(tmp_path / "last.pth")
    for seed in range(300):  # (seeds 50, 56 and 263 make pickle raise MemoryError(), whose message is empty)
        rng = np.random.default_rng(seed)
        with open(path, "wb") as f:
            f.write(rng.bytes(int(rng.integers(1, 4096))))
        with pytest.raises(CheckpointError) as e:
            ckpt_mod.load_checkpoint(path)
        message = str(e.value)
        assert message.startswith(f"{path}: not a readable checkpoint (") and "\n" not in message, (seed, message)


@pytest.mark.parametrize("error", [MemoryError(), EOFError(), Exception(""), RuntimeError("\n  \n")],
                         ids=lambda e: type(e).__name__)
def test_an_unreadable_last_pth_with_an_empty_message_is_refused_with_one_line(tiny_root, tmp_path, monkeypatch,
                                                                               capsys, error):
    snap = tmp_path / "run"
    snap.mkdir()
    (snap / "last.pth").write_bytes(np.random.default_rng(50).bytes(3000))

    def load(*a, **k):
        raise error

    monkeypatch.setattr(torch, "load", load)
    with pytest.raises(SystemExit) as e:
        run_main(train_fully_supervised_ACDC.main, _sup(tiny_root, str(snap)))
    assert e.value.code == 2
    assert _one_error_line(capsys) == (f"error: {snap / 'last.pth'}: not a readable checkpoint "
                                       f"({type(error).__name__})")


def _raise(error):
    def fail(*a, **k):
        raise error
    return fail


def test_every_error_handler_survives_an_empty_message(tmp_path, monkeypatch):
    """The handlers that quote an exception's message in their one line, each given one without any text."""
    h5 = str(tmp_path / "case.h5")
    write_h5(h5, np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8))
    png = str(tmp_path / "scan.png")
    write_like(png, np.zeros((1, 8, 8), np.uint8), _picture())
    scan = str(tmp_path / "scan.nii.gz")
    nifti(scan, np.zeros((2, 8, 8), np.float32))
    with monkeypatch.context() as m:
        m.setattr(h5py, "File", _raise(OSError("")))
        with pytest.raises(DataError, match=r"case.h5: unreadable h5 file \(OSError\); re-create or remove it"):
            read_case(h5, 4, 3)
    with monkeypatch.context() as m:
        m.setattr(sitk.ImageFileReader, "Execute", _raise(RuntimeError("")))
        with pytest.raises(DataError, match=r"scan.nii.gz: cannot read it \(RuntimeError\); is it a complete image"):
            read_image(scan)
    with monkeypatch.context() as m:
        import PIL.Image

        m.setattr(PIL.Image, "open", _raise(OSError("")))
        with pytest.raises(DataError, match=r"scan.png: cannot read it as an image \(OSError\)"):
            read_image(png)
    with monkeypatch.context() as m:
        m.setattr(official_sources, "read_itk", _raise(DataError("")))
        with pytest.raises(DataError, match=r"case p1: cannot read .*scan.nii.gz \(DataError\); re-download it"):
            official_sources._read(scan, "p1")
    net = torch.nn.Linear(2, 2)
    with monkeypatch.context() as m:
        m.setattr(net, "load_state_dict", _raise(RuntimeError("")))
        with pytest.raises(CheckpointError, match=r"x.pth: model 'model' does not match this architecture "
                                                  r"\(RuntimeError\)"):
            ckpt_mod.load_state(net, {}, "model 'model'", "x.pth")
    assert image_io.read_image(scan)[0].shape == (2, 8, 8)  # and the files themselves were fine
