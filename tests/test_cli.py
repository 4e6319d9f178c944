"""The batch command line, on real files, with the tiny RDN (``--model``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.imagefactory import encoded, gradient, jpeg, png
from supersizeme.service import cli
from supersizeme.service.config import REPO_ROOT


def picture(mode: str = "RGB", size: tuple[int, int] = (20, 12)) -> Image.Image:
    return Image.fromarray(gradient(*size)).convert(mode)


def transparent() -> Image.Image:
    image = picture("RGBA")
    alpha = np.full((12, 20), 255, np.uint8)
    alpha[:, :10] = 0
    image.putalpha(Image.fromarray(alpha))
    return image


@pytest.fixture
def photos(tmp_path) -> Path:
    """Three good images (one in a subfolder), three bad files and one hidden file."""
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    (folder / "street.png").write_bytes(png(picture()))
    (folder / "trip" / "beach.jpg").write_bytes(jpeg(picture(size=(16, 24))))
    (folder / "logo.png").write_bytes(png(transparent()))
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "cut.png").write_bytes(png(picture())[:60])
    (folder / "anim.gif").write_bytes(encoded(picture(), "GIF"))
    (folder / ".thumbnail.png").write_bytes(b"hidden and broken")
    return folder


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def upscale(*args: object) -> int:
    """The command line with these arguments; without a photo model unless one is named."""
    named = ["--photo-model", "none"] if "--photo-model" not in args else []
    return cli.main(["upscale", *map(str, args), *named])


def test_batch_in_a_subprocess_writes_the_good_files_and_reports_the_bad(
    photos, tmp_path, tiny_model_dir
):
    out = tmp_path / "out"
    command = ["upscale", photos, "--out", out, "--model", tiny_model_dir]
    command += ["--photo-model", "none"]
    completed = subprocess.run(
        [sys.executable, "-m", "supersizeme", *map(str, command)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1, completed.stderr
    assert size_of(out / "street-x2.png") == (40, 24)
    assert size_of(out / "trip" / "beach-x2.png") == (32, 48)
    assert Image.open(out / "logo-x2.png").mode == "RGBA"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        "beach-x2.png",
        "logo-x2.png",
        "street-x2.png",
    ]
    assert "3 written, 3 failed:" in completed.stdout
    for name, code in [
        ("notes.txt", "unsupported_media_type"),
        ("cut.png", "corrupt_image"),
        ("anim.gif", "unsupported_media_type"),
    ]:
        assert f"{photos / name}: {code}: " in completed.stdout
        assert f"{photos / name}: {code}: " in completed.stderr  # reported as it happens
    assert "thumbnail" not in completed.stdout + completed.stderr
    assert "6/6" in completed.stderr and "100%" in completed.stderr  # the progress bar
    assert "Traceback" not in completed.stdout + completed.stderr
    # TensorFlow's import-time banner (absl, oneDNN) is not ours to show; rdn mutes it.
    assert "oneDNN" not in completed.stderr and "absl" not in completed.stderr


def test_scale_4_as_webp(tmp_path, tiny_model_dir, capsys):
    source = tmp_path / "in.png"
    source.write_bytes(png(transparent()))
    status = upscale(source, "--out", tmp_path / "out", "--model", tiny_model_dir)
    assert status == 0
    status = upscale(
        source, "--out", tmp_path / "out", "--model", tiny_model_dir, "--scale", "4",
        "--format", "webp",
    )  # fmt: skip
    assert status == 0
    with Image.open(tmp_path / "out" / "in-x4.webp") as result:
        assert (result.format, result.mode, result.size) == ("WEBP", "RGBA", (80, 48))
    assert "1 written, 0 failed." in capsys.readouterr().out


def test_transparency_as_jpeg_and_missing_paths_are_failures(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "logo.png").write_bytes(png(transparent()))
    (tmp_path / "photo.png").write_bytes(png(picture()))
    status = upscale(
        tmp_path / "logo.png", tmp_path / "photo.png", tmp_path / "missing.png",
        "--out", tmp_path / "out", "--model", tiny_model_dir, "--format", "jpeg",
    )  # fmt: skip
    assert status == 1
    output = capsys.readouterr().out
    assert "1 written, 2 failed:" in output
    assert f"{tmp_path / 'logo.png'}: format_cannot_carry_alpha: " in output
    assert f"{tmp_path / 'missing.png'}: not_found: " in output
    assert size_of(tmp_path / "out" / "photo-x2.jpeg") == (40, 24)


def test_jpeg_files_go_to_the_photo_model_of_their_quality_unless_told(
    tmp_path, tiny_model_dir, tiny_photo_model_dir, tiny_photo_low_model_dir, capsys
):
    for quality in (40, 85):
        (tmp_path / f"q{quality}.jpg").write_bytes(jpeg(picture(), quality=quality))
    models = (
        "--model", tiny_model_dir, "--photo-model", tiny_photo_model_dir,
        "--photo-low-model", tiny_photo_low_model_dir,
    )  # fmt: skip
    results = {}
    for choice in ("auto", "clean", "photo", "photo-low"):
        out = tmp_path / choice
        assert upscale(tmp_path / "q40.jpg", tmp_path / "q85.jpg", "--out", out, *models,
                       "--use-model", choice) == 0  # fmt: skip
        results[choice] = {
            name: np.asarray(Image.open(out / f"{name}-x2.png")) for name in ("q40", "q85")
        }
    capsys.readouterr()

    def same(a: str, b: str, name: str) -> bool:
        return np.array_equal(results[a][name], results[b][name])

    assert same("auto", "photo-low", "q40") and not same("auto", "photo", "q40")
    assert same("auto", "photo", "q85") and not same("auto", "photo-low", "q85")
    assert not same("auto", "clean", "q40") and not same("auto", "clean", "q85")


def test_a_model_choice_without_its_model_is_a_usage_error(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "in.jpg").write_bytes(jpeg(picture()))
    status = upscale(
        tmp_path / "in.jpg", "--out", tmp_path / "out", "--model", tiny_model_dir,
        "--photo-model", "none", "--use-model", "photo-low",
    )  # fmt: skip
    assert status == cli.EXIT_USAGE
    assert "--use-model photo-low needs --photo-low-model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_input_is_never_overwritten(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "a.png").write_bytes(png(picture()))
    earlier = png(picture(size=(10, 10)))
    (tmp_path / "a-x2.png").write_bytes(earlier)
    assert upscale(tmp_path, "--out", tmp_path, "--model", tiny_model_dir) == 1
    assert (tmp_path / "a-x2.png").read_bytes() == earlier
    assert size_of(tmp_path / "a-x2-x2.png") == (20, 20)
    assert "would_overwrite_input" in capsys.readouterr().out


def test_results_inside_the_input_folder_are_not_read_back(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "a.png").write_bytes(png(picture()))
    for _ in range(2):
        assert upscale(tmp_path, "--out", tmp_path / "big", "--model", tiny_model_dir) == 0
        assert "1 written, 0 failed." in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "big").iterdir()] == ["a-x2.png"]


def test_two_inputs_for_one_output_is_a_conflict(tmp_path, tiny_model_dir, capsys):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.png").write_bytes(png(picture()))
    status = upscale(
        tmp_path / "one", tmp_path / "two", "--out", tmp_path / "out", "--model", tiny_model_dir
    )
    assert status == 1
    assert "output_conflict" in capsys.readouterr().out


def test_the_pixel_cap_can_be_raised_and_x4_gets_a_fifth(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "a.png").write_bytes(png(picture()))  # 240 pixels
    common = ("--out", tmp_path / "out", "--model", tiny_model_dir, "--max-pixels", "1000")
    assert upscale(tmp_path / "a.png", *common) == 0
    assert upscale(tmp_path / "a.png", *common, "--scale", "4") == 1
    assert "too_many_pixels" in capsys.readouterr().out
    assert upscale(tmp_path / "a.png", *common[:-1], "1200", "--scale", "4") == 0


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["upscale", "a.png"],
        ["upscale", "a.png", "--out", "o", "--scale", "3"],
        ["upscale", "a.png", "--out", "o", "--format", "gif"],
        ["upscale", "a.png", "--out", "o", "--max-pixels", "0"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_unusable_model_or_out_folder_exit_2_before_any_work(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(png(picture()))
    assert upscale(tmp_path / "a.png", "--out", tmp_path / "o", "--model", tmp_path) == 2
    assert "cannot load the model" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert upscale(tmp_path / "a.png", "--out", tmp_path / "file") == 2
    assert "not a folder" in capsys.readouterr().err


def test_a_failure_inside_one_file_does_not_stop_the_batch(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    broken = png(picture())
    (tmp_path / "a.png").write_bytes(broken)
    (tmp_path / "b.png").write_bytes(png(picture(size=(30, 12))))
    real = cli.decode_for

    def flaky(data, *args, **kwargs):
        if data == broken:
            raise RuntimeError("decoder surprise")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(cli, "decode_for", flaky)
    assert upscale(tmp_path, "--out", tmp_path / "out", "--model", tiny_model_dir) == 1
    output = capsys.readouterr().out
    assert "1 written, 1 failed:" in output
    assert "internal_error: RuntimeError: decoder surprise" in output


def test_ctrl_c_exits_130_with_a_short_message(tmp_path, tiny_model_dir, capsys, monkeypatch):
    (tmp_path / "a.png").write_bytes(png(picture()))

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "attempt", interrupted)
    assert upscale(tmp_path, "--out", tmp_path / "out", "--model", tiny_model_dir) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_a_file_named_twice_is_done_once(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "a.png").write_bytes(png(picture()))
    common = ("--out", tmp_path / "out", "--model", tiny_model_dir)
    assert upscale(tmp_path / "a.png", tmp_path, *common) == 0
    assert "1 written, 0 failed." in capsys.readouterr().out


def run_in_a_child(*args: object) -> subprocess.CompletedProcess:
    """The command line in a child process with its address space capped at 8 GiB, so that
    a regression that reads an endless device fails this test instead of the machine."""
    script = (
        "import resource, runpy, sys; "
        "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)); "
        "sys.argv[0] = 'supersizeme'; "
        "runpy.run_module('supersizeme', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a FIFO read would block forever
    )


def test_fifos_and_devices_are_refused_and_the_run_goes_on(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes(png(picture()))
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "named.jpg")
    out = tmp_path / "out"
    completed = run_in_a_child(
        "upscale", folder, tmp_path / "named.jpg", "--out", out, "--model", tiny_model_dir,
        "--photo-model", "none",
    )
    assert completed.returncode == 1, completed.stderr
    assert "1 written, 3 failed:" in completed.stdout
    for path, message in [
        (folder / "pipe.png", "a FIFO (named pipe), not a regular file"),
        (folder / "zero.png", "a character device, not a regular file"),
        (tmp_path / "named.jpg", "a FIFO (named pipe), neither a file nor a folder"),
    ]:
        assert f"{path}: not_a_file: {message}" in completed.stdout
    assert size_of(out / "good-x2.png") == (40, 24)
    assert "Traceback" not in completed.stdout + completed.stderr


def test_results_are_never_written_through_a_symbolic_link(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    (tmp_path / "a.png").write_bytes(png(picture()))
    (tmp_path / "b.png").write_bytes(png(picture()))
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    common = ("--out", out, "--model", tiny_model_dir)
    # Links planted at the final name and at the temporary name the CLI once used: the
    # final one is replaced by the result, its target left alone.
    (out / "a-x2.png").symlink_to(victim)
    (out / ".a-x2.png.part").symlink_to(victim)
    assert upscale(tmp_path / "a.png", *common) == 0
    assert not (out / "a-x2.png").is_symlink() and size_of(out / "a-x2.png") == (40, 24)
    assert victim.read_text() == "precious"
    # A link at the very temporary name (made guessable here): the write fails instead.
    monkeypatch.setattr(cli.secrets, "token_hex", lambda nbytes: "guessed")
    (out / ".b-x2.png.guessed.part").symlink_to(victim)
    assert upscale(tmp_path / "b.png", *common) == 1
    assert f"{tmp_path / 'b.png'}: write_failed: File exists" in capsys.readouterr().out
    assert victim.read_text() == "precious"
    assert (out / ".b-x2.png.guessed.part").is_symlink() and not (out / "b-x2.png").exists()


def test_an_interrupted_write_leaves_no_partial_file(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "a.png").write_bytes(png(picture()))

    def interrupted(source, target):
        assert Path(source).read_bytes()  # the temporary file was complete
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.os, "replace", interrupted)
    assert upscale(tmp_path / "a.png", "--out", tmp_path / "out", "--model", tiny_model_dir) == 130
    assert list((tmp_path / "out").iterdir()) == []
