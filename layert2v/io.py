"""Video files in and out, with PyAV.

Every layer of a clip is a video file: RGB streams as H.264 (4:4:4) MP4, alpha mattes as grayscale H.264 MP4.
Writers are bit-exact (`+bitexact`, one encoder thread, x264's plain C code) so that the same frames always give
the same bytes: `data.dvc` tracks a regenerated dataset by hash, and that only works if encoding is deterministic.
x264's assembly is picked per CPU: an AVX-512 host wrote other bytes than the host the hash was made on, and
not even the same bytes twice (1 file in 40 clips), so `asm=0` (synth 2.2x slower, ~75 s for the default data).

Readers turn every FFmpeg failure into a `VideoError` naming the file and the rule it broke, so that a
bad clip is rejected with a reason instead of crashing a whole run.

Shapes: T frames, H x W pixels; RGB frames are uint8 `[T, H, W, 3]`, masks float32 `[T, H, W]` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

H264_CRF = 12  # docs/results.md states the measured round-trip PSNR
# 4:4:4 chroma: at 64x64 with saturated colours, 4:2:0 subsampling alone costs ~10 dB (median 31 vs 42 dB
# measured on synthetic clips) for the same file size. Pass "yuv420p" where players need it.
RGB_PIX_FMT = "yuv444p"


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8, rounded and clipped: the one conversion every writer and cache uses."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


class VideoError(ValueError):
    """A video file that cannot be used; the message names the file and the rule broken."""

    def __init__(self, path: Path | str, rule: str) -> None:
        super().__init__(f"{path}: {rule}")
        self.path = str(path)
        self.rule = rule


@dataclass(frozen=True, kw_only=True)
class VideoInfo:
    """What a container says about its first video stream, read without decoding it."""

    frames: int  # frames actually decodable is checked on read; this is the container's count (0 = unknown)
    height: int
    width: int
    fps: float
    pix_fmt: str


def _encode(path: Path, frames: np.ndarray, fps: int, pix_fmt: str, src_format: str, crf: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "asm=0"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=src_format)
            container.mux(stream.encode(image))
        container.mux(stream.encode())


def write_video(
    path: Path | str, frames: np.ndarray, fps: int, crf: int = H264_CRF, pix_fmt: str = RGB_PIX_FMT
) -> None:
    """Write uint8 RGB frames `[T, H, W, 3]` (H, W even) as an H.264 MP4 (4:4:4 unless told otherwise)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video wants uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    _encode(Path(path), frames, fps, pix_fmt, "rgb24", crf)


def write_mask(path: Path | str, alpha: np.ndarray, fps: int, crf: int = H264_CRF) -> None:
    """Write an alpha matte (float `[T, H, W]` in [0, 1], or uint8) as a grayscale H.264 MP4."""
    if alpha.dtype != np.uint8:
        alpha = to_uint8(alpha)
    if alpha.ndim != 3:
        raise ValueError(f"write_mask wants [T, H, W], got {alpha.shape}")
    _encode(Path(path), alpha, fps, "gray", "gray", crf)


def probe(path: Path | str) -> VideoInfo:
    """Read the container header of `path`; `VideoError` if it is missing, unreadable or has no video."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "file is missing")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or 0
            return VideoInfo(
                frames=int(stream.frames or 0),
                height=stream.codec_context.height,
                width=stream.codec_context.width,
                fps=float(rate),
                pix_fmt=stream.codec_context.pix_fmt or "",
            )
    except av.FFmpegError as err:
        raise VideoError(path, f"cannot be opened as video ({err.__class__.__name__}: {err})") from err


def _decode(path: Path, fmt: str) -> np.ndarray:
    if not path.is_file():
        raise VideoError(path, "file is missing")
    frames = []
    reformatter = VideoReformatter()  # one per clip: `frame.to_ndarray(format=)` sets a scaler up per frame, 5x slower
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "has no video stream")
            for frame in container.decode(video=0):
                frames.append(reformatter.reformat(frame, format=fmt).to_ndarray())
    except av.FFmpegError as err:
        if not frames:
            raise VideoError(path, f"cannot be decoded ({err.__class__.__name__}: {err})") from err
        raise VideoError(path, f"truncated or corrupt after {len(frames)} frames ({err})") from err
    if not frames:
        raise VideoError(path, "has no decodable frames")
    return np.stack(frames)


def read_video(path: Path | str) -> np.ndarray:
    """Decode every frame of `path` to uint8 RGB `[T, H, W, 3]`."""
    return _decode(Path(path), "rgb24")


def _has_alpha(pix_fmt: str) -> bool:
    return pix_fmt.startswith(("yuva", "rgba", "bgra", "argb", "abgr", "ya", "gbrap"))


def read_mask(path: Path | str) -> np.ndarray:
    """Decode an alpha matte to float32 `[T, H, W]` in [0, 1].

    The released VidLayer masks come in three forms, all accepted: grayscale (used as is),
    RGB (channels averaged) and RGBA (the alpha channel).
    """
    path = Path(path)
    pix_fmt = probe(path).pix_fmt
    if _has_alpha(pix_fmt):
        alpha = _decode(path, "rgba")[..., 3].astype(np.float32)
    elif pix_fmt.startswith("gray"):
        alpha = _decode(path, "gray").astype(np.float32)
    else:
        alpha = _decode(path, "rgb24").astype(np.float32).mean(axis=-1)
    return alpha / 255.0


# ---------------------------------------------------------------- layers with alpha: writers and readers


def _rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 RGBA `[T, H, W, 4]` from straight uint8 RGB `[T, H, W, 3]` and uint8 alpha `[T, H, W]`."""
    return np.ascontiguousarray(np.concatenate([rgb, alpha[..., None]], axis=-1))


def _write_frames(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, fps: int, options: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgba")))
        container.mux(stream.encode())


def write_prores_alpha(path: Path | str, rgb: np.ndarray, alpha: np.ndarray, fps: int) -> None:
    """ProRes 4444 with alpha (`prores_ks`, yuva444p10le) in a .mov: what compositors import."""
    _write_frames(Path(path), _rgba(rgb, alpha), "prores_ks", "yuva444p10le", fps, {"profile": "4"})


def write_webm_alpha(path: Path | str, rgb: np.ndarray, alpha: np.ndarray, fps: int) -> None:
    """VP9 `yuva420p` in WebM: alpha video for browsers."""
    options = {"crf": "20", "b": "0", "auto-alt-ref": "0", "deadline": "good", "cpu-used": "4"}
    _write_frames(Path(path), _rgba(rgb, alpha), "libvpx-vp9", "yuva420p", fps, options)


def write_png_sequence(folder: Path | str, rgb: np.ndarray, alpha: np.ndarray) -> list[Path]:
    """One RGBA PNG per frame, `frame_0000.png`, ...: lossless, readable by any tool."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(_rgba(rgb, alpha)):
        paths.append(folder / f"frame_{index:04d}.png")
        Image.fromarray(frame, mode="RGBA").save(paths[-1])
    return paths


def read_rgba(path: Path | str) -> np.ndarray:
    """uint8 RGBA `[T, H, W, 4]` of a video with alpha (ProRes 4444, PNG-in-MOV, ... and VP9 WebM).

    FFmpeg's native VP9 decoder drops the alpha plane, so WebM is decoded with libvpx-vp9 explicitly.
    """
    path = Path(path)
    if path.suffix.lower() != ".webm":
        return _decode(path, "rgba")
    frames, reformatter = [], VideoReformatter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoder = av.CodecContext.create("libvpx-vp9", "r")
        decoder.extradata = stream.codec_context.extradata
        for packet in container.demux(stream):  # ends with an empty packet, which flushes the decoder
            frames += [reformatter.reformat(f, format="rgba").to_ndarray() for f in decoder.decode(packet)]
    if not frames:
        raise VideoError(path, "has no decodable frames")
    return np.stack(frames)


def read_png_sequence(folder: Path | str) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGBA")) for p in sorted(Path(folder).glob("frame_*.png"))])


# ---------------------------------------------------------------- previews for people


def contact_sheet(rows: dict[str, np.ndarray], path: Path | str, max_frames: int = 8) -> Path:
    """A PNG grid: one labelled row per stream (uint8 `[T, H, W, 3]`), up to `max_frames` evenly spaced columns."""
    from PIL import Image, ImageDraw

    frames = next(iter(rows.values())).shape[0]
    columns = np.linspace(0, frames - 1, min(frames, max_frames)).round().astype(int)
    height, width = next(iter(rows.values())).shape[1:3]
    scale = max(1, 96 // height)
    label = 90
    sheet = Image.new("RGB", (label + len(columns) * width * scale, len(rows) * height * scale), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, video) in enumerate(rows.items()):
        draw.text((4, r * height * scale + 4), name, fill="black")
        for c, t in enumerate(columns):
            tile = Image.fromarray(video[t]).resize((width * scale, height * scale), Image.NEAREST)
            sheet.paste(tile, (label + c * width * scale, r * height * scale))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def write_gif(path: Path | str, frames: np.ndarray, fps: int) -> Path:
    """An animated GIF of uint8 RGB frames `[T, H, W, 3]`, looping."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path
