"""Training in several processes, on one host or on several: JAX's distributed runtime through
`keras.distribution`.

Why JAX: Keras 3's `fit` has no multi-worker path on TensorFlow (`MultiWorkerMirroredStrategy`
is a tf.keras API; keras-team/keras#20585), while on JAX `keras.distribution` runs `DataParallel`
over every device of every process. One host with several GPUs keeps TensorFlow's
`MirroredStrategy` (`train.loop`); a group is for several processes.

A group (`join`): process 0, the chief, prepares the run folder, reads the data, makes the split
and is the only process that writes; it sends the others the run's settings and split
(`share_run`, `follow`) and a resumed run's training state (`restore`), so another host needs the data
but not the run folder. Every process builds the same global input pipeline and feeds its slice
of each global batch (`shard_train`), so a step sees the batch one process would see; each
process feeds the whole validation batch (`replicate`), so the validation scores (means over
images) are those of one process. After `fit` the group ends (`leave`) and the chief scores the
test split alone.

A process whose peer is gone stops with one line instead of waiting: a collective that fails
raises (`failed` names it a `GroupError`), and the runtime itself ends a process that waits
elsewhere (at once when the coordinator is gone, else after the peer timeout), which the command
shows as one line (`_filter_stderr`).
"""

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile

import numpy as np

from keras_litenext.runs import Run, TrainConfig
from keras_litenext.runs.checks import host_port

__all__ = ["ENV", "Group", "GroupError", "Launch", "join", "launch_from"]

# The variables Keras' own `keras.distribution.initialize` reads (the coordinator is the first address).
ENV = {"coordinator": "KERAS_DISTRIBUTION_JOB_ADDRESSES", "count": "KERAS_DISTRIBUTION_NUM_PROCESSES",
       "index": "KERAS_DISTRIBUTION_PROCESS_ID"}
FLAGS = {"coordinator": "--coordinator-address", "count": "--num-processes", "index": "--process-id"}
PEER_TIMEOUT_ENV = "KERAS_LITENEXT_PEER_TIMEOUT"
PEER_TIMEOUT_S = 60  # a process silent this long is taken for dead (the runtime's heartbeat timeout)
JOIN_TIMEOUT_S = 300  # how long the processes wait for each other at the start
# The callback hooks `Group.chief_callbacks` forwards
_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
          "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end")
# What a collective says when its peer is gone (gloo on CPU, NCCL/gRPC on GPU)
_LOST = ("gloo", "connection reset", "connection closed", "connection refused", "broken pipe", "socket closed",
         "coordination service", "heartbeat", "unavailable:", "nccl")


class GroupError(RuntimeError):
    """A group of training processes cannot form or lost a process."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """Where a process stands in its group: the coordinator's `HOST:PORT`, the process count and
    this process's index (0 is the chief)."""

    coordinator: str
    count: int
    index: int


def launch_from(coordinator=None, count=None, index=None, environ=None):
    """The `Launch` of the flags given, else of the `KERAS_DISTRIBUTION_*` variables; None for a
    single process (nothing given, or a count of 1).

    Raises:
        ValueError: a part missing or out of range (one line naming the flag or variable).
    """
    env = os.environ if environ is None else environ
    given, source = {"coordinator": coordinator, "count": count, "index": index}, {}
    for key, value in given.items():
        source[key] = FLAGS[key]
        if value is None and env.get(ENV[key], "").strip():
            value, source[key] = env[ENV[key]].strip(), ENV[key]
            if key != "coordinator":
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(f"{ENV[key]}={env[ENV[key]]!r}: must be a whole number") from None
        given[key] = value
    if all(v is None for v in given.values()) or given["count"] == 1:
        return None
    missing = [f"{FLAGS[k]} (or {ENV[k]})" for k, v in given.items() if v is None]
    if missing:
        raise ValueError("training in several processes needs --coordinator-address HOST:PORT, --num-processes N and "
                         f"--process-id I on every process; missing: {', '.join(missing)}")
    try:
        address = host_port(str(given["coordinator"]).split(",")[0])
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"{source['coordinator']}: {e} (process 0's address)") from None
    count, index = given["count"], given["index"]
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"{source['count']} {count!r}: must be a whole number >= 1")
    if not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"{source['index']} {index!r}: must be 0 to {count - 1} ({source['count']} {count})")
    return Launch(address, count, index)


def join(launch, quiet=False):
    """Join this process to its group (`launch_from`); returns the `Group`, or None for one process.
    `quiet` (the command, without --verbose): the runtime's log lines are held back, and its fatal
    ending when a peer is gone is one line (`_filter_stderr`).

    Raises:
        ValueError: not the JAX backend.
        GroupError: the group did not form (a process missing, the address unreachable).
    """
    if launch is None:
        return None
    import keras

    if keras.backend.backend() != "jax":
        raise ValueError(f"training in several processes ({FLAGS['count']} {launch.count}) runs on JAX's distributed runtime: "
                         "set KERAS_BACKEND=jax (Keras 3 has no multi-worker training on TensorFlow; see docs/training.md)")
    group = Group(launch, quiet=quiet)
    group._connect()
    return group


class Group:
    """This process's part in a group of training processes (`join`)."""

    def __init__(self, launch, quiet=False):
        self.launch, self.index, self.count, self.quiet = launch, launch.index, launch.count, quiet
        self.is_chief = launch.index == 0
        self.timeout = int(os.environ.get(PEER_TIMEOUT_ENV) or PEER_TIMEOUT_S)
        self.devices = self.local_devices = None
        self._shared = False

    def __repr__(self):
        return f"Group(process {self.index} of {self.count}, coordinator {self.launch.coordinator})"

    @property
    def name(self):
        return f"process {self.index} of {self.count}"

    # -- forming and ending ------------------------------------------------------------------
    def _connect(self):
        import jax
        import keras

        if self.quiet:
            self._filter = _filter_stderr(self._lost_line())
        try:
            jax.distributed.initialize(self.launch.coordinator, self.count, self.index, initialization_timeout=JOIN_TIMEOUT_S,
                                       heartbeat_timeout_seconds=self.timeout)
        except Exception as err:  # noqa: BLE001  (one line naming the address)
            raise GroupError(f"{self.name} could not join the group at {self.launch.coordinator} within {JOIN_TIMEOUT_S} s: "
                             f"{_first_line(err)} (every process must start with the same --coordinator-address and "
                             "--num-processes, and process 0 must be reachable there)") from None
        self.devices, self.local_devices = jax.device_count(), jax.local_device_count()
        keras.distribution.set_distribution(keras.distribution.DataParallel(auto_shard_dataset=False))

    def leave(self):
        """End the group: each process waits here for the others, then the runtime shuts down and
        the model's variables are this process's own again (the chief goes on alone)."""
        import jax
        import keras

        keras.distribution.set_distribution(None)
        jax.distributed.shutdown()

    def stop(self, line, code=1):
        """Print `line` and end this process at once: its peers cannot finish a collective with it,
        and the runtime's exit would wait for them (or abort)."""
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            print(line, file=sys.stderr, flush=True)
        os._exit(code)

    def _lost_line(self):
        """What a process says when the runtime ends it: its coordinator, or a peer, is gone."""
        who = (f"process 0 (the coordinator at {self.launch.coordinator}) is gone" if not self.is_chief
               else f"a process of the group stopped answering for {self.timeout} s")
        return f"error: {who}, so {self.name} stops too; {RESUME_ADVICE}"

    def failed(self, err):
        """After `err` on this process: the chief tells the others if they still wait for the run
        (`follow`). Returns a `GroupError` when `err` says a peer is gone, else None."""
        if self.is_lost(err):
            return GroupError(f"another process of the group stopped, so {self.name} stops too ({_first_line(err)[:160]})"
                              + ("" if self.is_chief else f"; {RESUME_ADVICE}"))
        if self.is_chief and not self._shared:
            with contextlib.suppress(Exception):
                self._broadcast_json({"error": _first_line(err)})
        return None

    @staticmethod
    def is_lost(err):
        """Whether `err` says that a peer (or the coordinator) is gone."""
        text = f"{type(err).__name__}: {err}".lower()
        return any(word in text for word in _LOST)

    # -- what the chief sends ----------------------------------------------------------------
    def share_run(self, run, train_size, batch_size):
        """The chief sends the run's settings and split (after checking the global batch)."""
        self.check_batch(train_size, batch_size)
        self._broadcast_json({"config": run.config.to_dict(), "splits": run.splits(), "changes": sorted(run.changes)})
        self._shared = True

    def follow(self, config):
        """A `Run` of the chief's settings and split for this process; its own `--data`, if given,
        is where it reads the data. Nothing of it is written."""
        if self.is_chief:
            raise ValueError("the chief prepares the run folder itself")
        record = self._broadcast_json(None)
        if "error" in record:
            raise GroupError(f"process 0 stopped: {record['error']}")
        own = config.data if "data" in getattr(config, "stated", ()) and config.data else None
        settings = TrainConfig.from_dict(record["config"])
        if own:
            settings.data = os.path.abspath(own)
        self._shared = True
        run = _FollowerRun(settings, record["splits"])
        run.changes = dict.fromkeys(record["changes"])
        return run

    def restore(self, model, backup=None):
        """Load the chief's training state (`backup`, a `RunBackup` the chief alone reads) on
        every process: its bytes are sent to the others and each process loads them alike (under a
        group each variable's assignment is a collective). Returns the epochs it holds (0: none)."""
        from keras_litenext.train.callbacks import RunBackup

        done, path = backup.latest() if self.is_chief and backup is not None else (0, None)
        if path is not None:
            with open(path, "rb") as f:
                data = f.read()
        else:
            data = b""
        done = int(self._broadcast_json(done))
        data = self._broadcast_bytes(data)
        if not data:
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, f"epoch-{done:04d}.weights.h5"), "wb") as f:
                f.write(data)
            RunBackup(tmp).restore(model)
        return done

    @contextlib.contextmanager
    def alone(self):
        """Work of this process alone (the chief's files): no distribution is set inside, so the
        variables Keras creates there (a reference optimizer when saving, a deploy-form model) are
        this process's own; under the group each creation is a collective the others never join."""
        import keras

        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(None)
        try:
            yield
        finally:
            keras.distribution.set_distribution(previous)

    def chief_callbacks(self, callbacks):
        """`callbacks` (the run folder's writers) as one callback whose hooks run `alone`."""
        import keras

        group = self

        class ChiefOnly(keras.callbacks.Callback):
            def set_model(self, model):
                super().set_model(model)
                for c in callbacks:
                    c.set_model(model)

            def set_params(self, params):
                super().set_params(params)
                for c in callbacks:
                    c.set_params(params)

        def forward(name):
            def hook(self, *args, **kwargs):
                with group.alone():
                    for c in callbacks:
                        getattr(c, name)(*args, **kwargs)
            return hook

        for name in _HOOKS:
            setattr(ChiefOnly, name, forward(name))
        return ChiefOnly()

    # -- checks ----------------------------------------------------------------------------
    def check_batch(self, train_size, batch_size):
        if batch_size % self.devices:
            raise ValueError(f"--batch-size {batch_size} is the global batch: it must split evenly over the {self.devices} devices "
                             f"of the {self.count} processes (e.g. {max(self.devices, batch_size // self.devices * self.devices)})")
        if train_size < batch_size:
            raise ValueError(f"the training split has {train_size} images, fewer than the global batch (--batch-size {batch_size}): "
                             "lower --batch-size")

    def check_data(self, arrays):
        """Every process read the same training and validation data (else a `ValueError` naming
        them, on every process)."""
        from jax.experimental import multihost_utils

        digest = hashlib.blake2b(digest_size=8)
        for name in ("train", "val"):
            for part in arrays[name]:
                for item in (part if isinstance(part, list) else [part]):
                    digest.update(np.ascontiguousarray(item).data)
        every = np.asarray(multihost_utils.process_allgather(np.frombuffer(digest.digest(), np.uint32)))
        differ = [i for i in range(self.count) if not np.array_equal(every[i], every[0])]
        if differ:
            raise ValueError(f"process(es) {', '.join(map(str, differ))} read other training data than process 0: every "
                             "process needs the same dataset (pass --data where it lies on that host)")

    # -- input pipelines ---------------------------------------------------------------------
    def shard_train(self, dataset, batch_size, steps):
        """This process's slice of each global batch: the batches cut into `count` slices and every
        `count`-th slice taken (as `DataParallel`'s auto-sharding does), the step count kept."""
        import tensorflow as tf

        sliced = dataset.rebatch(batch_size // self.count).shard(self.count, self.index)
        return sliced.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE)

    def replicate(self, dataset):
        """The whole validation batch on this process (tiled over its devices when it has several):
        the global batch holds each image equally often, so its mean scores are one process's."""
        if self.local_devices == 1:
            return dataset
        import tensorflow as tf

        copies = self.local_devices

        def tile(*batch):
            return tf.nest.map_structure(lambda t: tf.concat([t] * copies, axis=0), batch)

        return dataset.map(tile)

    # -- transport ---------------------------------------------------------------------------
    def _broadcast_json(self, value):
        """The chief's JSON-able `value` on every process."""
        return json.loads(self._broadcast_bytes(json.dumps(value).encode("utf-8") if self.is_chief else b""))

    def _broadcast_bytes(self, data):
        """The chief's `data` on every process (one collective for the size, one for the bytes)."""
        from jax.experimental import multihost_utils

        size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data) if self.is_chief else 0)))
        if not size:
            return b""
        buffer = np.frombuffer(data, np.uint8) if self.is_chief else np.zeros(size, np.uint8)
        return np.asarray(multihost_utils.broadcast_one_to_all(buffer)).astype(np.uint8).tobytes()


RESUME_ADVICE = "process 0's run folder keeps the last finished epoch: start every process again with --resume"


class _FollowerRun(Run):
    """The chief's run as another process sees it: its settings and split, and no folder."""

    def __init__(self, config, splits):
        super().__init__(None, config)
        self._splits = splits

    def splits(self):
        return self._splits


# The runtime ends a process whose coordinator is gone (or, after the peer timeout, whose peer
# is) with a fatal log line and a C++ stack trace, from its own thread: jaxlib 0.10 takes no Python
# hook for it (a `missed_heartbeat_callback` given to its client aborts with std::bad_cast). A
# command's stderr therefore passes through this filter, another process, which turns that
# ending into one line and drops the runtime's log lines that come with it.
_FATAL = "Terminating process because the JAX distributed service detected fatal errors"
_RUNTIME_LOG = ("coordination_service_agent.cc", "coordination_service.cc", "preemption_sync_manager.cc", "preemption_notifier.cc",
                "distributed/client.cc", "distributed/service.cc")
_FILTER = """
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to report
fatal, line, noise = sys.argv[1], sys.argv[2], sys.argv[3:]
ended = False
for text in sys.stdin:
    if ended or any(n in text for n in noise):
        continue
    if fatal in text:
        text, ended = line + "\\n", True
    sys.stdout.write(text)
    sys.stdout.flush()
"""


def _filter_stderr(line):
    """Route this process's stderr (file descriptor 2) through `_FILTER`, which writes `line`
    in place of the runtime's fatal ending. Does nothing when stderr cannot be replaced."""
    import subprocess

    try:
        sys.stderr.flush()
        stderr = os.dup(2)
        try:
            helper = subprocess.Popen([sys.executable, "-c", _FILTER, _FATAL, line, *_RUNTIME_LOG], stdin=subprocess.PIPE,
                                      stdout=stderr, text=True, encoding="utf-8", errors="replace")
        finally:
            os.close(stderr)
        os.dup2(helper.stdin.fileno(), 2)
    except OSError:
        return None
    return helper


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
