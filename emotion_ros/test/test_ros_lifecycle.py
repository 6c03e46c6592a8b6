"""emotion_ros.ros.lifecycle.run_node: a real node process, driven over the ROS graph."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import pytest  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import String  # noqa: E402

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NODE_SCRIPT = textwrap.dedent("""
    import sys
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
    from rclpy.node import Node
    from std_msgs.msg import String
    from emotion_ros.ros.lifecycle import run_node

    KIND = sys.argv[1]

    class Managed(LifecycleNode):
        def __init__(self):
            super().__init__(NAME)
            self.declare_parameter("fail_configure", False)
            self.pub = self.create_lifecycle_publisher(String, "ticks", 10)
            self.create_timer(0.05, lambda: self.pub.publish(String(data="tick")))

        def on_configure(self, state):
            print("CONFIGURE", flush=True)
            if self.get_parameter("fail_configure").value:
                self.get_logger().error("model file missing: /nope/face.pt")
                return TransitionCallbackReturn.FAILURE
            return TransitionCallbackReturn.SUCCESS

        def on_activate(self, state):
            print("ACTIVATE", flush=True)
            return super().on_activate(state)

        def on_shutdown(self, state):
            print("SHUTDOWN-CALLBACK", flush=True)
            return TransitionCallbackReturn.SUCCESS

    class Plain(Node):
        def __init__(self):
            super().__init__(NAME)
            self.pub = self.create_publisher(String, "ticks", 10)
            self.create_timer(0.05, lambda: self.pub.publish(String(data="plain")))

    def broken():
        raise RuntimeError("camera index 7 not found")

    class SelfStop(Node):  # a file source that reaches its end
        def __init__(self):
            super().__init__(NAME)
            self.n = 0
            self.create_timer(0.02, self.tick)

        def tick(self):
            self.n += 1
            if self.n == 5:
                from emotion_ros.ros.lifecycle import request_stop
                print("STOPPING", flush=True)
                request_stop()

    def pair():
        return [Managed(), Plain2()]

    class Plain2(Node):
        def __init__(self):
            super().__init__(NAME + "_second")
            self.pub = self.create_publisher(String, "ticks", 10)
            self.create_timer(0.05, lambda: self.pub.publish(String(data="second")))

    class Hang(Managed):  # a shutdown that never returns (a stuck driver or middleware call)
        def on_shutdown(self, state):
            print("HANGING", flush=True)
            import time
            time.sleep(600)
            return TransitionCallbackReturn.SUCCESS

    NAME = sys.argv[2]
    factory = {"managed": Managed, "plain": Plain, "broken": broken, "selfstop": SelfStop, "pair": pair,
               "hang": Hang}[KIND]
    sys.exit(run_node(factory, args=sys.argv, **({"stop_grace_s": 3.0} if KIND == "hang" else {})))
""")


@pytest.fixture
def launch(tmp_path):
    script = tmp_path / "node_under_test.py"
    script.write_text(NODE_SCRIPT)
    procs = []

    def start(kind, name, *ros_args):
        env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1")
        args = [sys.executable, str(script), kind, name]
        if ros_args:
            args += ["--ros-args", *ros_args]
        p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


class Listener:
    def __init__(self, ctx, name, topic):
        self.ctx = ctx
        self.node = Node(name, context=ctx)
        self.msgs = []
        self.node.create_subscription(String, topic, lambda m: self.msgs.append(m.data), 10)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)

    def spin_until(self, pred, timeout=30.0):  # generous: a loaded CI machine starts Python slowly
        end = time.monotonic() + timeout
        while not pred() and time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.05)
        return pred()

    def call(self, srv_type, name, request, timeout=20.0):
        cli = self.node.create_client(srv_type, name)
        assert cli.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        fut = cli.call_async(request)
        self.ex.spin_until_future_complete(fut, timeout_sec=timeout)
        self.node.destroy_client(cli)
        return fut.result()

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


def test_autostart_activates_then_sigint_shuts_down_cleanly(ctx, launch):
    name = f"lc_auto_{os.getpid()}"
    lis = Listener(ctx, "lc_listener_a", f"/{name}_ticks")
    p = launch("managed", name, "-r", f"ticks:=/{name}_ticks")
    try:
        assert lis.spin_until(lambda: len(lis.msgs) >= 3), "an autostarted lifecycle node must reach active"
        state = lis.call(GetState, f"/{name}/get_state", GetState.Request())
        assert state.current_state.label == "active"
    finally:
        lis.close()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=15)
    assert p.returncode == 0, out
    assert out.index("CONFIGURE") < out.index("ACTIVATE") < out.index("SHUTDOWN-CALLBACK"), out
    assert "Traceback" not in out


def test_autostart_false_waits_for_a_manager(ctx, launch):
    name = f"lc_manual_{os.getpid()}"
    lis = Listener(ctx, "lc_listener_b", f"/{name}_ticks")
    p = launch("managed", name, "-p", "autostart:=false", "-r", f"ticks:=/{name}_ticks")
    try:
        state = lis.call(GetState, f"/{name}/get_state", GetState.Request(), timeout=40)  # the node is still starting
        assert state.current_state.label == "unconfigured"
        lis.spin_until(lambda: False, timeout=0.3)
        assert lis.msgs == []  # inactive lifecycle publisher stays silent
        for tid in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            req = ChangeState.Request()
            req.transition.id = tid
            assert lis.call(ChangeState, f"/{name}/change_state", req).success
        assert lis.spin_until(lambda: len(lis.msgs) >= 2)
    finally:
        lis.close()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=15)
    assert p.returncode == 0, out
    assert "SHUTDOWN-CALLBACK" in out


def test_failed_configure_exits_with_code_1(launch):
    p = launch("managed", f"lc_fail_{os.getpid()}", "-p", "fail_configure:=true")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1, out
    assert "model file missing" in out and "configure failed" in out


def test_factory_error_exits_with_code_1_and_names_it(launch):
    p = launch("broken", f"lc_broken_{os.getpid()}")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 1, out
    assert "camera index 7 not found" in out


def test_plain_node_spins_and_stops_on_sigint(ctx, launch):
    name = f"plain_{os.getpid()}"
    lis = Listener(ctx, "lc_listener_c", f"/{name}_ticks")
    p = launch("plain", name, "-r", f"ticks:=/{name}_ticks")
    try:
        assert lis.spin_until(lambda: len(lis.msgs) >= 2)
        assert lis.msgs[0] == "plain"
    finally:
        lis.close()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=15)
    assert p.returncode == 0, out


def test_request_stop_ends_the_process(launch):
    p = launch("selfstop", f"selfstop_{os.getpid()}")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0 and "STOPPING" in out, out


def test_a_factory_may_return_several_nodes(ctx, launch):
    name = f"pair_{os.getpid()}"
    lis = Listener(ctx, "lc_listener_d", f"/{name}_ticks")
    p = launch("pair", name, "-r", f"ticks:=/{name}_ticks")
    try:
        assert lis.spin_until(lambda: {"tick", "second"} <= set(lis.msgs))
    finally:
        lis.close()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=15)
    assert p.returncode == 0 and "SHUTDOWN-CALLBACK" in out, out


def test_a_shutdown_that_hangs_ends_after_the_grace_period_with_its_stack(ctx, launch):
    """A node asked to stop must stop: past ``stop_grace_s`` (15 s in the nodes, 3 s here) the process prints where
    it is stuck and exits with code 1 (under a launch that has gone, nothing else would end it)."""
    name = f"lc_hang_{os.getpid()}"
    lis = Listener(ctx, "lc_listener_e", f"/{name}_ticks")
    p = launch("hang", name, "-r", f"ticks:=/{name}_ticks")
    try:
        assert lis.spin_until(lambda: len(lis.msgs) >= 2)
    finally:
        lis.close()
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == 1, out
    assert "HANGING" in out and "Timeout (0:00:03)!" in out and "in on_shutdown" in out, out
    assert 2.5 < took < 20, took


def test_the_parent_watch_stops_the_loop_and_arms_the_watchdog_when_the_launch_goes():
    """exit_with_parent's second path (the main thread never ran the SIGTERM handler): the watcher thread sees its
    parent change, asks the loop to stop and bounds the rest of the shutdown."""
    from emotion_ros.ros import lifecycle
    lifecycle._stop.clear()
    try:
        t0 = time.monotonic()
        lifecycle._watch_parent(os.getppid() + 10**6, period_s=0.05)   # "the launch" is not our parent any more
        assert time.monotonic() - t0 < 1.0
        assert lifecycle._stop.is_set() and lifecycle._grace["armed"]
    finally:
        lifecycle._disarm_stop_watchdog()
        lifecycle._stop.clear()
    assert not lifecycle._grace["armed"]


def test_repeated_signals_stop_once_and_return_at_once(monkeypatch):
    """run_node's SIGINT/SIGTERM handler: the first signal stops the loop and arms the watchdog; the repeats of a
    signal storm return before touching the Event (nested in one another they ran into RecursionError, or could
    deadlock on the Event's lock) and do not arm anything again."""
    from emotion_ros.ros import lifecycle
    armed, sets = [], []
    monkeypatch.setattr(lifecycle, "_arm_stop_watchdog", lambda: armed.append(1))
    monkeypatch.setattr(lifecycle._stop, "set", lambda: sets.append(1))
    monkeypatch.setitem(lifecycle._signals, "seen", False)
    for _ in range(50):
        lifecycle._on_signal(signal.SIGINT, None)
    assert sets == [1] and armed == [1] and lifecycle._signals["seen"]
