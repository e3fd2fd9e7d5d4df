"""Metric writing: `workdir/metrics.jsonl`, TensorBoard events, images, audio and texts, and a progress line.

Only the primary process (index 0) writes files; every process may call the methods.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

import numpy as np

from maskgen import outputs

log = logging.getLogger("maskgen")


class MetricWriter:
    def __init__(self, workdir: str, is_primary: bool = True, tensorboard: bool = True):
        self.workdir = workdir
        self.is_primary = is_primary
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if is_primary:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def supersede_after(self, step: int) -> int:
        """Moves logged rows beyond `step` (and lines cut short by a kill) out of `metrics.jsonl`,
        so a run resumed at `step` does not log those steps twice. Returns how many were moved.

        Nothing is deleted: the rows are appended, verbatim, to `metrics.superseded.jsonl`, after a
        header row `{"superseded": {"resumed_from": step, "time": ..., "rows": n}}`, before
        `metrics.jsonl` is rewritten (atomically) without them.
        """
        if not self.is_primary or not os.path.exists(self.jsonl_path):
            return 0
        with open(self.jsonl_path) as f:
            rows = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
        kept, moved = [], []
        for line in rows:
            try:
                (kept if json.loads(line)["step"] <= step else moved).append(line)
            except (ValueError, KeyError, TypeError):
                moved.append(line)  # A line cut short by a kill: kept verbatim beside the others.
        if not moved:
            return 0
        superseded = os.path.join(self.workdir, "metrics.superseded.jsonl")
        header = {"superseded": {"resumed_from": int(step), "time": time.time(), "rows": len(moved)}}
        with open(superseded, "a") as f:
            f.write(json.dumps(header) + "\n")
            f.writelines(moved)
            f.flush()
            os.fsync(f.fileno())
        tmp = self.jsonl_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.jsonl_path)
        log.warning("resuming at step %d: moved %d metrics row(s) logged after it from %s to %s (kept, not "
                    "deleted; those steps are logged again)", step, len(moved), self.jsonl_path, superseded)
        return len(moved)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.is_primary:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, float(value), int(step))
            self._tb.flush()

    def _path(self, kind: str, name: str, step: int, ext: str) -> str:
        return os.path.join(self.workdir, kind, f"{name.replace('/', '_')}_{int(step):07d}.{ext}")

    def write_image(self, step: int, name: str, image: np.ndarray) -> str | None:
        """Writes a uint8 [H, W, C] image to `workdir/images/{name}_{step}.png` and TensorBoard."""
        if not self.is_primary:
            return None
        path = outputs.write_png(self._path("images", name, step, "png"), image)
        if self._tb is not None:
            self._tb.add_image(name, image, int(step), dataformats="HWC")
            self._tb.flush()
        return path

    def write_audio(self, step: int, name: str, audio: np.ndarray, sample_rate: int) -> str | None:
        """Writes float [T] or [T, C] audio in [-1, 1] to `workdir/audio/{name}_{step}.wav` and TensorBoard."""
        if not self.is_primary:
            return None
        path = outputs.write_wav(self._path("audio", name, step, "wav"), audio, sample_rate)
        if self._tb is not None:
            # The summary proto directly: tensorboardX's add_audio needs the soundfile package just to
            # encode the same WAV bytes that maskgen.outputs writes with the standard library.
            from tensorboardX.proto.summary_pb2 import Summary

            pcm = outputs.to_pcm16(audio)
            clip = Summary.Audio(sample_rate=float(sample_rate), num_channels=pcm.shape[1], length_frames=pcm.shape[0],
                                 encoded_audio_string=outputs.wav_bytes(audio, sample_rate), content_type="audio/wav")
            self._tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=name, audio=clip)]), int(step))
            self._tb.flush()
        return path

    def write_text(self, step: int, name: str, text: str) -> str | None:
        """Writes text to `workdir/texts/{name}_{step}.txt` and TensorBoard."""
        if not self.is_primary:
            return None
        path = outputs.write_text(self._path("texts", name, step, "txt"), text)
        if self._tb is not None:
            # TensorBoard renders text as markdown; a code block keeps samples verbatim.
            self._tb.add_text(name, "```\n" + text.replace("```", "` ` `") + "\n```", int(step))
            self._tb.flush()
        return path

    def write_outputs(self, step: int, prefix: str, *, images=None, audio=None, texts=None) -> list[str]:
        """Every non-scalar output of an evaluator `prefix`, each with its kind's writer; returns the paths."""
        paths = []
        for name, image in (images or {}).items():
            paths.append(self.write_image(step, f"{prefix}/{name}", image))
        for name, (samples, rate) in (audio or {}).items():
            paths.append(self.write_audio(step, f"{prefix}/{name}", samples, rate))
        for name, text in (texts or {}).items():
            paths.append(self.write_text(step, f"{prefix}/{name}", text))
        return [p for p in paths if p]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """Steps/s, examples/s and ETA between progress lines."""

    def __init__(self, first_step: int, total_steps: int, global_batch_size: int):
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self._last_step = first_step
        self._last_time = time.perf_counter()

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        return {
            "steps_per_sec": steps_per_sec,
            "examples_per_sec": steps_per_sec * self.global_batch_size,
            "eta_sec": (self.total_steps - step) / max(steps_per_sec, 1e-9),
        }


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m{seconds % 60:02d}s"
