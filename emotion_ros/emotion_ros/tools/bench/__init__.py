"""emotion-bench: throughput, latency and footprint of the emotion_ros graph on this machine.

What it runs: face_node, voice_node and fusion_node as separate processes (``python -m emotion_ros.nodes.<x>``),
talking over real DDS (Fast DDS; with ``config/fastdds_shm.xml`` as ``FASTDDS_DEFAULT_PROFILES_FILE`` when that file
exists), and this process as the driver: it publishes

- ``image_raw``: 640x480 bgr8 frames at ``--fps`` (30) showing real faces (matplotlib's Grace Hopper sample photo,
  cropped, scaled and tiled onto a background: 1 face of ~170 px, then 5 faces of ~100 px), moving by a few pixels
  from frame to frame; the frame's header stamp is the wall-clock time at publishing;
- ``audio`` (+ latched ``audio_info``): speech (espeak-ng sentences when espeak-ng is installed, else a synthetic
  voiced signal) with pauses, as S16LE mono 16 kHz in 20 ms chunks at real time, each stamped with the time of its
  first sample and published when its last sample is "captured".

Phases (``--phases``): ``face_1`` and ``face_5``; audio streams throughout. Each phase: ``--warmup`` seconds
discarded, then ``--seconds`` measured, then a short grace period for late results.

Measured:

- face path: frames processed per second (``emotion/faces`` messages for frames published in the window),
  ``dropped`` (published minus answered), latency from the frame's header stamp to receipt of its
  FaceEmotionArray (p50/p95/max) and the mean number of faces found per frame;
- voice: real-time factor (processing time / audio duration) from the voice node's ``/diagnostics`` when it reports
  one (``rtf_source`` says so), and always in-process by running ``VoicePipeline`` on the same audio
  (``rtf_inprocess``); latency from the end of each spoken utterance (known from the generated audio) to receipt of
  its final (non-partial) VoiceEmotion;
- end to end: frame stamp to receipt of the EmotionState whose header.stamp equals that frame's stamp;
- per node process: peak RSS (VmHWM), current RSS, CPU % (utime+stime over the measured window; 100 = one core);
- device (from the nodes' diagnostics, else ``torch.cuda.is_available()``).

``--profile`` adds an in-process breakdown of the face node's per-frame work (message conversion (to BGR for BlazeFace,
grey for Haar, as the node does), grey conversion +
detection, tracking, alignment, model, result message) with the node's default parameters, so one can see where
the time goes; a face model file with int8 ranges (``emotion-train quantize-face``) adds a row of the other precision
(``face_N_float32`` with the node's default ``int8: true``).

Output: progress lines, then as the LAST line one JSON object (see ``--help``). Models: the nodes' defaults
(``models/{face,voice,fusion}.pt``); a missing one is replaced by a randomly initialised checkpoint of the same
architecture (same cost; ``models.random_init`` lists them), or all with ``--random-models``.

    emotion-bench --seconds 15
    emotion-bench --seconds 3 --warmup 1 --profile       # smoke run
    emotion-bench detect                                   # face detectors compared (tools/bench_detect.py)
    emotion-bench hosts                                    # robot + server on two network namespaces (bench_hosts.py)
    emotion-bench jpeg                                     # face accuracy vs JPEG quality on the eval clips

Modules: ``scene`` (the test frames), ``speech`` (the test audio), ``procs`` (checkpoints, node processes, /proc),
``driver`` (this process on the graph), ``stats`` (percentiles, per-phase results), ``graph`` (the graph run),
``inprocess`` (voice RTF and face profile in-process), ``summary`` (the JSON and its targets), ``cli`` (``main``),
``common`` (the package root, the node kinds, ``log``).
"""
from .cli import main
from .driver import Driver
from .graph import node_params
from .procs import default_model_paths, make_test_checkpoints
from .scene import background, compose_scene, scene_frames
from .speech import SENTENCES, _espeak, _synthetic_utterance, speech_stream
from .summary import check_targets

__all__ = ["Driver", "SENTENCES", "_espeak", "_synthetic_utterance", "background", "check_targets", "compose_scene",
           "default_model_paths", "main", "make_test_checkpoints", "node_params", "scene_frames", "speech_stream"]
