import av
import numpy as np
import pytest

from lib.data.video import VideoDecodeError, decode_clip, decode_window, write_gif, write_mp4


def _ramp(t=16, h=24, w=40):
    """Frame k is a flat grey of level 10 + 12k, so decoded frames tell which source frame they came from."""
    return np.stack([np.full((h, w, 3), 10 + 12 * k, dtype=np.uint8) for k in range(t)])


def _levels(video):
    return [round((float(f.mean()) - 10) / 12) for f in video]


@pytest.fixture
def ramp_mp4(tmp_path):
    return write_mp4(tmp_path / "ramp.mp4", _ramp(), fps=16)


def test_decodes_requested_frames_size_and_rate(ramp_mp4):
    clip = decode_clip(ramp_mp4, frames=4, fps=8, height=16, width=16)
    assert clip.shape == (4, 16, 16, 3) and clip.dtype == np.uint8
    assert _levels(clip) == [0, 2, 4, 6]  # 16 fps source sampled at 8 fps


def test_start_offset_and_upsampling_hold_frames(ramp_mp4):
    assert _levels(decode_clip(ramp_mp4, frames=3, fps=16, height=8, width=8, start=0.5)) == [8, 9, 10]
    assert _levels(decode_clip(ramp_mp4, frames=4, fps=32, height=8, width=8)) == [0, 0, 1, 1]


def test_decode_window_counts_the_frames_sample_and_hold_repeats(ramp_mp4):
    slower = decode_window(ramp_mp4, frames=4, fps=32, height=8, width=8)  # a 16 fps source at 32 fps
    assert slower.held == 2 and slower.source_fps == 16
    assert decode_window(ramp_mp4, frames=4, fps=16, height=8, width=8).held == 0  # its native rate
    assert decode_window(ramp_mp4, frames=4, fps=8, height=8, width=8).held == 0  # faster sources skip frames
    last = decode_window(ramp_mp4, frames=2, fps=32, height=8, width=8, start=15 / 16)  # the final frame, held
    assert _levels(last.frames) == [15, 15] and last.held == 1


def test_centre_crop_keeps_aspect(tmp_path):
    video = np.zeros((4, 20, 40, 3), dtype=np.uint8)
    video[:, :, 10:30] = 200  # bright middle half
    path = write_mp4(tmp_path / "wide.mp4", video, fps=8)
    clip = decode_clip(path, frames=2, fps=8, height=10, width=10)
    assert clip.mean() > 150  # the crop kept the centre, not the dark sides


def test_file_objects_are_accepted(ramp_mp4):
    with open(ramp_mp4, "rb") as f:
        assert decode_clip(f, frames=2, fps=8, height=8, width=8).shape == (2, 8, 8, 3)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"frames": 40, "fps": 16}, "too_few_frames"),
        ({"frames": 4, "fps": 8, "start": 0.9}, "too_few_frames"),
        ({"frames": 4, "fps": 8, "end": 0.2}, "too_few_frames"),
        ({"frames": 4, "fps": 8, "max_source_pixels": 100}, "frame_too_large"),
    ],
)
def test_decode_failures_carry_a_reason(ramp_mp4, kwargs, reason):
    with pytest.raises(VideoDecodeError) as info:
        decode_clip(ramp_mp4, height=8, width=8, **kwargs)
    assert info.value.reason == reason


def test_garbage_truncated_and_audio_only_files(tmp_path, ramp_mp4):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 50)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(ramp_mp4.read_bytes()[:600])
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    for path, reason in [(garbage, "unreadable"), (truncated, "unreadable"), (audio, "no_video_stream")]:
        with pytest.raises(VideoDecodeError) as info:
            decode_clip(path, frames=4, fps=8, height=8, width=8)
        assert info.value.reason == reason, (path, info.value)


def test_gif_and_mp4_writers(tmp_path):
    video = _ramp(6, 8, 8)
    gif = write_gif(tmp_path / "a.gif", video, fps=8, scale=2)
    mp4 = write_mp4(tmp_path / "a.mp4", video[:, :7, :7], fps=8)  # odd sizes are padded
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 6 and im.size == (16, 16)
    assert decode_clip(mp4, frames=6, fps=8, height=8, width=8).shape == (6, 8, 8, 3)
