"""Video I/O: lossy-but-close round trips, the three mask forms, and clear errors on broken files."""

from pathlib import Path

import av
import numpy as np
import pytest

from layert2v.io import VideoError, probe, read_mask, read_video, write_mask, write_video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def smooth_frames(t: int = 9, h: int = 32, w: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    wave = lambda fx, fy, i: 128 + 100 * np.sin(fx * x + fy * y + 0.3 * i)  # noqa: E731
    frames = [np.stack([wave(0.2, 0.05, i), wave(0.05, 0.25, i), wave(0.1, 0.1, -i)], -1) for i in range(t)]
    return np.stack(frames).astype(np.uint8)


def test_rgb_round_trip_is_close(tmp_path: Path) -> None:
    frames = smooth_frames()
    write_video(tmp_path / "a.mp4", frames, fps=8)
    back = read_video(tmp_path / "a.mp4")
    assert back.shape == frames.shape
    assert psnr(frames, back) > 30  # 4:2:0 chroma on colourful 32x48 content costs most of the loss
    info = probe(tmp_path / "a.mp4")
    assert (info.height, info.width, info.fps) == (32, 48, 8.0)


def test_writer_is_bit_exact(tmp_path: Path) -> None:
    frames = smooth_frames()
    write_video(tmp_path / "a.mp4", frames, fps=8)
    write_video(tmp_path / "b.mp4", frames, fps=8)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def _write_rgba_mov(path: Path, alpha: np.ndarray) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=8)
        stream.width, stream.height, stream.pix_fmt = alpha.shape[2], alpha.shape[1], "rgba"
        for a in alpha:
            rgba = np.zeros((*a.shape, 4), np.uint8)
            rgba[..., 0] = 255  # red everywhere: only the alpha channel carries the matte
            rgba[..., 3] = a
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgba, format="rgba")))
        container.mux(stream.encode())


@pytest.mark.parametrize("form", ["gray", "rgb", "rgba"])
def test_mask_forms(tmp_path: Path, form: str) -> None:
    alpha = np.zeros((5, 32, 32), np.uint8)
    alpha[:, 8:24, 8:24] = 255
    alpha[:, 12:20, 12:20] = 128
    path = tmp_path / f"mask_{form}.{'mov' if form == 'rgba' else 'mp4'}"
    if form == "gray":
        write_mask(path, alpha, fps=8)
    elif form == "rgb":
        write_video(path, np.repeat(alpha[..., None], 3, axis=-1), fps=8)
    else:
        _write_rgba_mov(path, alpha)
    back = read_mask(path)
    assert back.dtype == np.float32 and back.shape == alpha.shape
    assert back.min() >= 0 and back.max() <= 1
    assert np.abs(back - alpha / 255.0).mean() < 0.02


def test_missing_truncated_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="missing"):
        read_video(tmp_path / "nope.mp4")
    write_video(tmp_path / "ok.mp4", smooth_frames(), fps=8)
    data = (tmp_path / "ok.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError, match=r"cut\.mp4"):
        read_video(tmp_path / "cut.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoError, match=r"junk\.mp4"):
        read_video(tmp_path / "junk.mp4")
