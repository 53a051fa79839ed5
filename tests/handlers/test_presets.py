"""Named presets (built in and from the config file), extra options, and fast-start MP4s."""

from __future__ import annotations

import struct
import tomllib

import av
import pytest

from batchfarm.actors.errors import ConfigError, TaskError
from batchfarm.actors.handlers.presets import BUILTIN, available_presets
from batchfarm.actors.handlers.transcode import check_params, transcode
from batchfarm.actors.settings import MediaSettings, load
from tests.media import ffmpeg_exe, make_clip, probe_file


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 1.0, 320, 240)


def test_built_in_presets():
    assert sorted(BUILTIN) == [
        "aac",
        *(f"av1-{h}p" for h in (1080, 480, 720)),
        *(f"h264-{h}p" for h in (1080, 480, 720)),
        *(f"hevc-{h}p" for h in (1080, 480, 720)),
    ]
    # imageio-ffmpeg's build has SVT-AV1, so every built-in preset is available.
    assert sorted(available_presets(MediaSettings(), ffmpeg_exe())) == sorted(BUILTIN)


def test_av1_presets_need_an_av1_encoder(tmp_path):
    fake = tmp_path / "ffmpeg"
    fake.write_text(
        "#!/bin/sh\necho ' ------'\necho ' V....D libx264  x'\necho ' V....D libx265  x'\n"
    )
    fake.chmod(0o755)
    names = available_presets(MediaSettings(), str(fake))
    assert sorted(names) == [
        "aac",
        *(f"{c}-{h}p" for c in ("h264", "hevc") for h in (1080, 480, 720)),
    ]


@pytest.mark.parametrize(
    ("preset", "made"),
    [
        ("hevc-480p", ("hevc", "aac", ".mp4")),
        ("av1-480p", ("av1", "aac", ".mp4")),
        ("aac", (None, "aac", ".m4a")),
    ],
)
def test_each_codec_preset_makes_what_it_says(make_ctx, clip, preset, made):
    video, audio, suffix = made
    # Height 120 keeps the test quick; the preset chooses codecs, speed and CRF.
    params = {"preset": preset} | ({"height": 120} if video else {})
    harness = make_ctx("transcode", params=params, inputs=[clip])
    meta = transcode(harness.ctx)
    out = harness.ctx.output_dir / f"out{suffix}"
    info = probe_file(out)
    assert (info.video.codec if info.video else None, info.audio.codec) == (video, audio)
    assert (meta["video_codec"], meta["audio_codec"]) == (video, audio)
    assert meta["duration_s"] == pytest.approx(1.0, abs=0.1)
    if video:
        assert (info.video.width, info.video.height) == (160, 120)
    assert harness.progress[-1] == 1.0


def config(tmp_path, text):
    path = tmp_path / "batchfarm.toml"
    path.write_text(text)
    return path


def test_user_presets_from_the_config_file(make_ctx, clip, tmp_path):
    path = config(
        tmp_path,
        '[media.presets.tiny]\nvideo_codec = "hevc"\nheight = 96\ncrf = 35\nspeed = "ultrafast"\n'
        '[media.presets.voice]\nvideo_codec = "none"\naudio_bitrate = "48k"\n',
    )
    media = load(path, environ={}).settings.media
    assert media.presets == {
        "tiny": {"video_codec": "hevc", "height": 96, "crf": 35, "speed": "ultrafast"},
        "voice": {"video_codec": "none", "audio_bitrate": "48k"},
    }
    # `config show` prints them as TOML, as a config file would hold them.
    assert tomllib.loads(f"presets = {media.presets!r}")["presets"] == media.presets
    harness = make_ctx("transcode", params={"preset": "tiny"}, inputs=[clip], media=media)
    meta = transcode(harness.ctx)
    assert (meta["video_codec"], meta["height"], meta["width"]) == ("hevc", 96, 128)
    argv = harness.ctx.argvs[0]
    assert argv[argv.index("-crf") + 1] == "35"
    assert argv[argv.index("-preset") + 1] == "ultrafast"
    # x265 keeps a thread pool of its own: it is held to the task's threads too.
    assert argv[argv.index("-x265-params") + 1] == "log-level=error:pools=1"
    harness = make_ctx("transcode", params={"preset": "voice"}, inputs=[clip], media=media)
    assert transcode(harness.ctx)["video_codec"] is None
    assert "48k" in harness.ctx.argvs[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[media.presets.web]\ncrf = 99\n", "[media.presets.web] crf = 99: expected an integer"),
        ("[media.presets.web]\nheigth = 480\n", "[media.presets.web] heigth = 480: unknown key"),
        (
            "[media.presets.web]\nheight = 481\n",
            "[media.presets.web]: height = 481: expected an even height",
        ),
        (
            '[media.presets.web]\nvideo_codec = "vp9"\n',
            '[media.presets.web] video_codec = "vp9": expected "av1" or "h264" or "hevc" or "none"',
        ),
        (
            '[media.presets.web]\nvideo_codec = "av1"\nspeed = "fast"\n',
            "[media.presets.web]: speed = 'fast': expected one of 0, 1, 2,",
        ),
        (
            '[media.presets.web]\nvideo_codec = "none"\naudio_codec = "none"\n',
            "[media.presets.web]: expected video, audio or both",
        ),
        (
            '[media.presets.web]\naudio_bitrate = "128"\n',
            '[media.presets.web]: audio_bitrate = "128": expected a bit rate such as "128k"',
        ),
        (
            '[media]\npresets = "web"\n',
            '[media] presets = "web": expected a table of [name] tables',
        ),
        ("[media.presets]\nweb = 3\n", "[media.presets.web] = 3: expected a table"),
    ],
)
def test_bad_presets_name_the_preset_and_the_key(tmp_path, text, message):
    path = config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert str(caught.value).startswith(f"{path}: {message}")


def test_presets_from_the_environment():
    env = {"BATCHFARM_MEDIA_PRESETS": '{small = {height = 240, video_codec = "hevc"}}'}
    assert load(None, environ=env).settings.media.presets == {
        "small": {"height": 240, "video_codec": "hevc"}
    }
    with pytest.raises(ConfigError, match="expected an inline TOML table"):
        load(None, environ={"BATCHFARM_MEDIA_PRESETS": "small"})


def test_an_unknown_preset_is_refused_at_run_time(make_ctx, clip):
    harness = make_ctx("transcode", params={"preset": "mine"}, inputs=[clip])
    with pytest.raises(TaskError, match='param preset = "mine": expected one of the presets aac,'):
        transcode(harness.ctx)


def keyframes(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [i for i, p in enumerate(container.demux(stream)) if p.size and p.is_keyframe]


def test_allowlisted_options_reach_ffmpeg(make_ctx, clip):
    params = {"height": 120, "options": ["-g", "5", "-keyint_min", "5", "-sc_threshold", "0"]}
    harness = make_ctx("transcode", params=params, inputs=[clip])
    transcode(harness.ctx)
    assert keyframes(harness.ctx.output_dir / "out.mp4") == [0, 5, 10, 15, 20]


def top_level_boxes(path):
    boxes, data, at = [], path.read_bytes(), 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        boxes.append(kind.decode())
        at += size if size > 1 else len(data)
    return boxes


def test_mp4_outputs_are_fast_start(make_ctx, clip):
    harness = make_ctx("transcode", params={"height": 120}, inputs=[clip])
    transcode(harness.ctx)
    boxes = top_level_boxes(harness.ctx.output_dir / "out.mp4")
    # The index (moov) comes before the media (mdat): playback starts before the download ends.
    assert boxes.index("moov") < boxes.index("mdat")


def test_submit_time_checks_allow_a_workers_own_preset():
    # The manager does not know the workers' [media.presets]: a well-formed name passes, and
    # its overrides are held to the widest ranges (it may be AV1).
    check_params({"preset": "mine", "crf": 60, "speed": "8", "name": "a.m4a"})
    with pytest.raises(TaskError, match="param crf = 64: expected an integer from 0 to 63"):
        check_params({"preset": "mine", "crf": 64})
    with pytest.raises(TaskError, match=r'param preset = "\.\./mine": expected one of'):
        check_params({"preset": "../mine"})
    with pytest.raises(TaskError, match="param crf = 52: expected an integer from 0 to 51"):
        check_params({"preset": "h264-480p", "crf": 52})
