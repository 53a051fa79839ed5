"""Media helpers for the segment-parallel and ladder tests: sources with regular keyframes,
and what PyAV says each stream of a file holds when every packet is decoded."""

from __future__ import annotations

import array
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av

from tests.media import ffmpeg_exe


def make_source(
    path: Path,
    *,
    seconds: float = 8.0,
    size: str = "320x240",
    fps: str = "25",
    keyframe_s: float = 1.0,
    audio: bool = True,
    audio_offset: float = 0.0,
    tone_after: float = 0.0,
) -> Path:
    """An H.264 (with B-frames) + AAC clip with a keyframe every ``keyframe_s`` seconds.

    Like a camera's or an editor's export: the split cuts at those keyframes. The container
    follows the suffix. ``audio_offset`` seconds > 0 start the tone that much after the first
    frame; < 0 start the picture that much after the tone. ``tone_after`` seconds of silence
    open the audio track (so its first sound marks a moment).
    """
    argv = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if audio_offset < 0:
        argv += ["-itsoffset", f"{-audio_offset}"]
    argv += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        if audio_offset > 0:
            argv += ["-itsoffset", f"{audio_offset}"]
        argv += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    argv += ["-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-pix_fmt", "yuv420p"]
    argv += ["-force_key_frames", f"expr:gte(t,n_forced*{keyframe_s})", "-sc_threshold", "0"]
    argv += ["-threads", "1"]
    if audio:
        argv += ["-c:a", "aac", "-b:a", "64k"]
        if tone_after:
            argv += ["-af", f"adelay={tone_after * 1000:.0f}:all=1"]
    argv.append(str(path))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"making {path} failed ({done.returncode}): {done.stderr}")
    return path


@dataclass(frozen=True)
class Track:
    """One stream, decoded: its frames (video) or samples (audio) and where it starts and ends."""

    kind: str
    codec: str
    frames: int
    start: float
    end: float
    keyframes: int
    width: int = 0
    height: int = 0

    @property
    def duration(self) -> float:
        return self.end - self.start


def tracks(path: Path) -> dict[str, Track]:
    """Decode every packet of the first video and audio streams of ``path``, failing on damage.

    Raises ``av.FFmpegError`` on a decode error (error detection set to explode).
    """
    found: dict[str, Track] = {}
    with av.open(str(path)) as container:
        streams = [*container.streams.video[:1], *container.streams.audio[:1]]
        for stream in streams:
            stream.codec_context.options = {"err_detect": "explode"}
        spans: dict[int, list[float]] = {s.index: [] for s in streams}
        counts = dict.fromkeys(spans, 0)
        keys = dict.fromkeys(spans, 0)
        for packet in container.demux(streams):
            if packet.is_keyframe and packet.size:
                keys[packet.stream.index] += 1
            for frame in packet.decode():
                begin = float(frame.pts * frame.time_base)
                if isinstance(frame, av.AudioFrame):
                    length = frame.samples / frame.sample_rate
                    counts[packet.stream.index] += frame.samples
                else:
                    length = float(frame.duration * frame.time_base)
                    counts[packet.stream.index] += 1
                span = spans[packet.stream.index]
                span[:] = (
                    [min(span[0], begin), max(span[1], begin + length)]
                    if span
                    else [
                        begin,
                        begin + length,
                    ]
                )
        for stream in streams:
            start, end = spans[stream.index] or [0.0, 0.0]
            ctx = stream.codec_context
            found[stream.type] = Track(
                kind=stream.type,
                codec=ctx.name,
                frames=counts[stream.index],
                start=start,
                end=end,
                keyframes=keys[stream.index],
                width=getattr(ctx, "width", 0) or 0,
                height=getattr(ctx, "height", 0) or 0,
            )
    return found


def video_packets(path: Path) -> list[bytes]:
    """The payload of every packet of the first video stream, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [bytes(p) for p in container.demux(stream) if p.size]


def first_sound(path: Path, level: float = 0.05) -> float:
    """When the audio first gets louder than ``level``, in seconds after the first picture."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
        audio = container.streams.audio[0]
        for frame in container.decode(audio):
            resampler = av.AudioResampler(format="flt", layout="mono", rate=frame.sample_rate)
            for mono in resampler.resample(frame):
                samples = array.array("f", bytes(mono.planes[0]))[: mono.samples]
                for n, value in enumerate(samples):
                    if abs(value) > level:
                        return float(mono.pts * mono.time_base) + n / mono.sample_rate - start
    raise AssertionError(f"{path}: no sound above {level}")


def audio_alone(source: Path, path: Path) -> Path:
    """The audio of ``source``, copied alone into ``path``."""
    argv = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(source)]
    subprocess.run([*argv, "-vn", "-c", "copy", str(path)], check=True)
    return path


def make_other(path: Path, video: str, audio: str, seconds: float = 3.0) -> Path:
    """A 320x240 25 fps clip with a keyframe every second, in other codecs (``video``, ``audio``
    are ffmpeg encoder names); the container follows the suffix."""
    argv = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    argv += ["-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={seconds}"]
    argv += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    argv += ["-c:v", video, "-g", "25", "-c:a", audio]
    if video == "libvpx-vp9":
        argv += ["-deadline", "realtime", "-cpu-used", "8"]
    subprocess.run([*argv, str(path)], check=True, capture_output=True)
    return path
