"""Performance fixes made after emotion-bench (docs/BENCHMARKS.md) must not change results.

- FaceModel's fast CPU path (batch norm folded into the convolutions, channels-last) gives the eager network's
  probabilities and embeddings for every batch size, with and without flip averaging, and the eager path still
  runs when the fast one is off or the weights change.
- run_node spins a SingleThreadedExecutor by default (a MultiThreadedExecutor when asked for threads).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
import torch

from robust_helpers import small_checkpoints
from emotion_ros.core.face.model import FaceCNN, FaceModel, inference_copy
from emotion_ros.tools.bench import make_test_checkpoints


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("perf"))
    full = make_test_checkpoints(d + "/full", kinds=("face",))["face"]
    small = small_checkpoints(d + "/small", kinds=("face",))["face"]
    return {"full": full, "small": small}


def _trained_like(model: FaceModel, seed: int = 0) -> None:
    """Give the batch-norm layers non-trivial statistics (random-init ones are 0/1, which hides folding errors)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    model.refresh()


@pytest.mark.parametrize("which", ["full", "small"])
@pytest.mark.parametrize("flip", [True, False])
def test_fast_path_equals_the_eager_network(ckpts, which, flip):
    fast = FaceModel(ckpts[which], device="cpu", flip_tta=flip)
    slow = FaceModel(ckpts[which], device="cpu", flip_tta=flip, fast=False)
    _trained_like(fast)
    _trained_like(slow)
    assert fast._fast_net is not None and slow._fast_net is None
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 5, 10, 12):
        crops = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
        p1, e1 = fast.predict(crops)
        p2, e2 = slow.predict(crops)
        assert p1.shape == (n, 7) and e1.shape == (n, fast.embed_dim)
        np.testing.assert_allclose(p1, p2, atol=2e-5)
        np.testing.assert_allclose(e1, e2, atol=2e-4, rtol=1e-4)
        assert np.allclose(p1.sum(1), 1.0, atol=1e-5)
    # the network really differs from a fresh one (the check above is not trivially true)
    fresh = FaceModel(ckpts[which], device="cpu", flip_tta=flip)
    assert not np.allclose(fast.predict(crops)[0], fresh.predict(crops)[0])


def test_fast_copy_has_no_batch_norm_or_dropout_in_features(ckpts):
    net = FaceModel(ckpts["full"], device="cpu").net
    fast = inference_copy(net)
    kinds = {type(m) for m in fast.features}
    assert torch.nn.BatchNorm2d not in kinds and torch.nn.Dropout2d not in kinds
    assert sum(isinstance(m, torch.nn.Conv2d) for m in fast.features) == 8
    # the original network is untouched
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.features) == 8
    assert isinstance(FaceCNN(), torch.nn.Module)


def test_refresh_follows_weight_changes(ckpts):
    m = FaceModel(ckpts["small"], device="cpu")
    crops = np.random.default_rng(2).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    before = m.predict(crops)[0]
    with torch.no_grad():
        m.net.classifier.bias.add_(torch.tensor([3.0, 0, 0, 0, 0, 0, 0]))
    assert np.allclose(m.predict(crops)[0], before)  # the fast copy is a snapshot ...
    m.refresh()
    after = m.predict(crops)[0]
    assert (after[:, 0] > before[:, 0]).all()        # ... until refreshed


def test_run_node_uses_a_single_threaded_executor_unless_asked(monkeypatch):
    from rclpy.node import Node
    from emotion_ros.ros import lifecycle
    used = []

    def recording(name):
        base = getattr(lifecycle, name)

        class Recording(base):
            def __init__(self, *a, **kw):
                used.append(name)
                super().__init__(*a, **kw)
        return Recording
    for name in ("SingleThreadedExecutor", "MultiThreadedExecutor"):
        monkeypatch.setattr(lifecycle, name, recording(name))

    def factory():
        lifecycle.request_stop()  # spin loop ends at once
        return Node("executor_probe")
    assert lifecycle.run_node(factory, args=["probe"]) == 0
    assert lifecycle.run_node(factory, args=["probe"], num_threads=2) == 0
    assert used == ["SingleThreadedExecutor", "MultiThreadedExecutor"]


@pytest.mark.parametrize("on_face", [True, False])
def test_fusion_publishes_a_state_per_face_array(on_face, tmp_path):
    """publish_on_face: every face array gets its EmotionState (same stamp) at once, not at the next timer tick."""
    import time
    from emotion_msgs.msg import EmotionState, FaceEmotion, FaceEmotionArray
    from robust_helpers import Graph, NodeProcess
    from emotion_ros.core.labels import LABELS
    from emotion_ros.ros.convert import sec_to_stamp
    from emotion_ros.ros.node_utils import reliable_qos

    models = small_checkpoints(str(tmp_path), kinds=("fusion",))
    proc = NodeProcess("fusion", str(tmp_path), {"model_path": models["fusion"], "device": "cpu", "rate": 0.5,
                                                 "publish_on_face": on_face, "publish_on_change": False})
    g = Graph("publish_on_face_tester")
    try:
        states = g.subscribe("emotion/state", EmotionState, reliable_qos(100))
        pub = g.publisher("emotion/faces", FaceEmotionArray, reliable_qos(100))
        g.wait_node_up(proc, subscribes=["emotion/faces"], publishes=["emotion/state"])
        sent = []
        emb = np.random.default_rng(0).standard_normal(256).astype(np.float32).tolist()
        for k in range(20):
            m = FaceEmotionArray()
            t = time.time()
            m.header.stamp = sec_to_stamp(t)
            f = FaceEmotion(id="face_1", x=10, y=10, width=100, height=100, emotion="happy", confidence=0.7)
            f.labels = list(LABELS)
            f.probabilities = [0.05, 0.7, 0.05, 0.05, 0.05, 0.05, 0.05]
            f.embedding = emb
            m.faces = [f]
            pub.publish(m)
            sent.append((m.header.stamp.sec, m.header.stamp.nanosec))
            g.spin_for(0.05)

        def answered_now():
            got = {(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in states}
            return sum(s in got for s in sent)
        if on_face:
            # the last answers may still be on their way on a loaded machine: wait up to 2 s for them (in that
            # time the 0.5 Hz timer can answer one array at most, so >= 18 still needs publish_on_face)
            g.spin_until(lambda: answered_now() == len(sent), 2.0)
        else:
            g.spin_for(0.5)
        answered = answered_now()
        if on_face:
            assert answered >= 18, f"only {answered}/20 face arrays got their state"
        else:
            assert answered <= 3, f"{answered}/20 face arrays got a state at a 0.5 Hz steady rate"
    finally:
        g.close()
        proc.stop()


# --------------------------------------------------------------------------------------------------------------
# FacePipeline: whole-frame detection in the background
# --------------------------------------------------------------------------------------------------------------

class CountingDetector:
    """Wraps a detector, counting whole-frame and regional calls (and the threads they ran in)."""

    def __init__(self, inner):
        import threading
        self.inner, self.full, self.regional, self.threads = inner, 0, 0, set()
        self.wants_color = inner.wants_color
        self._threading = threading

    def detect(self, image):
        self.full += 1
        self.threads.add(self._threading.current_thread().name)
        return self.inner.detect(image)

    def detect_regions(self, image, boxes, **kw):
        self.regional += 1
        return self.inner.detect_regions(image, boxes, **kw)


def _pipelines(ckpts, async_detect):
    from emotion_ros.core.face.detect import make_detector
    from emotion_ros.core.face.pipeline import FacePipeline
    model = FaceModel(ckpts["small"], device="cpu")
    fg = CountingDetector(make_detector("haar"))
    bg = CountingDetector(make_detector("haar")) if async_detect else None
    return FacePipeline(model, detector=fg, full_detect_every=3, background_detector=bg), fg, bg


def _wait_idle(pipe, timeout=5.0):
    import time
    end = time.monotonic() + timeout
    while not pipe.background.idle() and time.monotonic() < end:
        time.sleep(0.005)


def test_background_detection_finds_new_faces_and_never_blocks_a_tracked_frame(ckpts):
    from emotion_ros.tools.bench import background, compose_scene
    pipe, fg, bg = _pipelines(ckpts, True)
    five, one = [], []
    for k in range(6):  # the same five-face scene, and one where only the first of them is there
        frame, boxes = compose_scene(5, shift=(k, 0))
        alone = frame.copy()
        empty = background()
        for x, y, w, h in boxes[1:]:
            x0, y0, x1, y1 = max(0, x - w // 2), max(0, y - h // 2), x + w + w // 2, y + h + h
            alone[y0:y1, x0:x1] = empty[y0:y1, x0:x1]
        five.append(frame)
        one.append(alone)
    first = pipe.process(one[0], 0.0)
    assert len(first) == 1 and fg.full == 1          # nothing tracked yet: whole frame at once
    face_id = first[0].id
    for k in range(1, 12):
        res = pipe.process(one[k % 6], k / 30)
        assert len(res) == 1 and res[0].id == face_id
        _wait_idle(pipe)
    assert fg.full == 1, "a tracked frame waited for a whole-frame pass"
    assert bg.full >= 2 and bg.threads == {"face_full_detect"}
    # four more people step in: found by the background passes within a few frames, the first keeps its id
    n = 0
    for k in range(12, 40):
        res = pipe.process(five[k % 6], k / 30)
        n = len(res)
        _wait_idle(pipe)
        if n == 5:
            break
    assert n == 5, f"only {n} of 5 faces after {k - 11} frames"
    assert face_id in {r.id for r in res}
    assert fg.full == 1
    pipe.close()
    pipe.background._thread.join(timeout=2.0)
    assert not pipe.background._thread.is_alive()


def test_background_detection_gives_the_same_faces_as_in_line(ckpts):
    from emotion_ros.tools.bench import scene_frames
    sync, _, _ = _pipelines(ckpts, False)
    asyn, _, _ = _pipelines(ckpts, True)
    frames = scene_frames(5, 6)
    for k in range(18):
        a = sync.process(frames[k % 6], k / 30)
        b = asyn.process(frames[k % 6], k / 30)
        _wait_idle(asyn)
        assert sorted(r.id for r in a) == sorted(r.id for r in b)
        for ra in a:
            rb = next(r for r in b if r.id == ra.id)
            np.testing.assert_allclose(ra.probs, rb.probs, atol=0.05)
    asyn.close()


def test_reset_discards_background_work_and_build_pipeline_wiring(ckpts):
    from emotion_ros.core.face.pipeline import build_pipeline
    from emotion_ros.nodes.face import PARAMS
    model = FaceModel(ckpts["small"], device="cpu")
    params = {k: v[0] for k, v in PARAMS.items()}
    assert params["async_full_detect"] is True                                       # the node's default ...
    assert build_pipeline(model, params).background is None                          # ... but offline: in line
    assert build_pipeline(model, {"full_detect_every": 1}, background=True).background is None
    node_default = build_pipeline(model, params, background=params["async_full_detect"])
    assert node_default.background is not None
    assert node_default.background.detector is not node_default.detector
    bg = node_default.background
    bg.submit(np.zeros((240, 320), np.uint8))
    node_default.reset()
    _wait_idle(node_default)
    assert bg.poll() is None                                                          # the old frame's result is gone
    node_default.close()
    assert not bg.submit(np.zeros((240, 320), np.uint8))


def test_face_node_sets_opencv_threads(ckpts):
    import cv2
    import rclpy
    from rclpy.context import Context
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from rclpy.parameter import Parameter
    from emotion_ros.nodes.face import FaceNode
    before = cv2.getNumThreads()
    ctx = Context()
    rclpy.init(context=ctx)
    try:
        for n in (1, 2):
            node = FaceNode(context=ctx, parameter_overrides=[
                Parameter("model_path", value=ckpts["small"]), Parameter("device", value="cpu"),
                Parameter("opencv_threads", value=n)])
            assert node.trigger_configure() == R.SUCCESS
            assert cv2.getNumThreads() == n
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        cv2.setNumThreads(before)


def test_flip_averaging_only_up_to_flip_tta_max_faces(ckpts):
    """With flip_tta_max_faces 2, batches of one or two crops are mirror-averaged and larger ones are classified
    once (the frame rate with a crowd); 0 = always."""
    rng = np.random.default_rng(2)
    models = {k: FaceModel(ckpts["full"], device="cpu", **k_kw) for k, k_kw in
              (("flip", dict(flip_tta=True)), ("plain", dict(flip_tta=False)),
               ("capped", dict(flip_tta=True, flip_tta_max_faces=2)),
               ("always", dict(flip_tta=True, flip_tta_max_faces=0)))}
    for m in models.values():
        _trained_like(m)
    crops = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    for n in (1, 2, 3, 5):
        got = models["capped"].predict(crops[:n])[0]
        want = models["flip" if n <= 2 else "plain"].predict(crops[:n])[0]
        other = models["plain" if n <= 2 else "flip"].predict(crops[:n])[0]
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert not np.allclose(got, other, atol=1e-6)  # flipping makes a difference on these crops
        np.testing.assert_allclose(models["always"].predict(crops[:n])[0], models["flip"].predict(crops[:n])[0],
                                   atol=1e-6)


@pytest.mark.skipif(not (hasattr(os, "setpriority") and sys.platform.startswith("linux")),
                    reason="per-thread nice is Linux's")
def test_background_detection_runs_at_the_lower_priority_it_is_given():
    """full_detect_nice: the whole-frame pass's thread (and only it) runs that many nice steps lower."""
    import threading
    from emotion_ros.core.face.pipeline import BackgroundDetector

    class Probe:
        wants_color = False

        def __init__(self):
            self.seen = []

        def detect(self, image):
            self.seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return []

    before = os.getpriority(os.PRIO_PROCESS, 0)
    for nice, want in ((0, before), (5, min(19, before + 5)), (40, 19)):
        probe = Probe()
        bg = BackgroundDetector(probe, nice=nice)
        assert bg.describe() == ("background thread" if nice == 0 else
                                 f"background thread, nice +{min(nice, 19)} asked (thread not started yet)")
        assert bg.submit(np.zeros((8, 8), np.uint8))
        end = time.monotonic() + 5
        while not probe.seen and time.monotonic() < end:
            time.sleep(0.01)
        bg.stop()
        assert probe.seen == [want], (nice, probe.seen)
        assert bg.nice_applied is (nice > 0)
        assert bg.describe() == ("background thread" if nice == 0 else
                                 f"background thread at nice +{min(nice, 19)}")     # what /diagnostics shows
        assert bg.priority_settled                      # the node stops refreshing it
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the caller's thread is untouched
    refused = BackgroundDetector(Probe(), nice=5)
    refused._priority_tried = True                        # as after a setpriority that raised
    assert refused.describe() == "background thread, nice +5 asked, not applied (refused, or not Linux)"
