"""Training on several devices or machines with TensorFlow's own `tf.distribute` engine.

    >>> dist = make_distribution("auto")   # one device, or every local GPU (MirroredStrategy)
    >>> dist.replicas, dist.global_batch_size(32)  # doctest: +SKIP
    (4, 128)

The config's `strategy` (also `skin-tf train --strategy`) picks the engine:

- auto: every local GPU with MirroredStrategy when there are two or more, else one device (two or
  more logical CPUs made with SKIN_TF_CPU_DEVICES count as devices too).
- mirrored: MirroredStrategy over all local GPUs, else over all logical CPU devices.
- multi_worker: MultiWorkerMirroredStrategy; the cluster and this process's task come from the
  TF_CONFIG environment variable (same cluster on every machine, its own task on each).
- tpu: TPUStrategy on the Cloud TPU named by $TPU_NAME (default "local": a TPU VM).

The per-replica batch stays the config's `batch_size`; the global batch is that times the number
of replicas. The learning rate follows `lr_scaling` (see `scale_phases`), and the rule, scale and
resulting rate are stored in meta.json. `SKIN_TF_CPU_DEVICES=N` splits the CPU into N logical
devices, so mirrored training can be tried on a machine without GPUs. docs/scaling.md has the
commands for a multi-GPU machine, several machines and a Cloud TPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tensorflow as tf

from skin_tf.training.config import LR_SCALING_RULES, STRATEGIES

CPU_DEVICES_ENV = "SKIN_TF_CPU_DEVICES"
TF_CONFIG_ENV = "TF_CONFIG"
TPU_NAME_ENV = "TPU_NAME"
# Errors a collective op raises when a peer worker died or stopped answering.
_PEER_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)
_strategies: dict[str, tf.distribute.Strategy] = {}  # one per process: collectives start once

P = TypeVar("P")


class DistributeError(RuntimeError):
    """A strategy that cannot be set up here; the message names the problem and the fix."""


class WorkerLostError(RuntimeError):
    """Multi-worker training stopped because a peer worker died or became unreachable."""


# ------------------------------------------------------------------ logical CPU devices


def cpu_devices_from_env(environ: Mapping[str, str] = os.environ) -> int | None:
    """The N of SKIN_TF_CPU_DEVICES=N (None when unset or empty).

    >>> cpu_devices_from_env({"SKIN_TF_CPU_DEVICES": "2"})
    2
    """
    text = environ.get(CPU_DEVICES_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise DistributeError(
            f"{CPU_DEVICES_ENV}={text!r}: expected a whole number of logical CPU devices >= 1 "
            f"(e.g. {CPU_DEVICES_ENV}=2), or leave it unset"
        )
    return int(text)


def configure_cpu_devices(count: int | None = None) -> int:
    """Split the first physical CPU into `count` logical devices (default: $SKIN_TF_CPU_DEVICES).

    Must run before TensorFlow initialises its devices (before the first op or model); calling
    it again with the same count is harmless. Returns the number of logical CPU devices.

    >>> configure_cpu_devices(2)  # doctest: +SKIP
    2
    """
    count = cpu_devices_from_env() if count is None else count
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if count is None:
        return len(current) if current else 1
    if current is not None and len(current) == count:
        return count
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as err:  # TensorFlow has already started its devices
        raise DistributeError(
            f"cannot split the CPU into {count} logical devices: TensorFlow has already "
            f"started in this process ({err}). Set {CPU_DEVICES_ENV} before starting Python, "
            "or call configure_cpu_devices before building any model"
        ) from err
    return count


# ------------------------------------------------------------------ TF_CONFIG


@dataclass(frozen=True)
class Task:
    """This process's place in a TF_CONFIG cluster."""

    cluster: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(self.cluster.get(kind, [])) for kind in ("chief", "worker"))

    @property
    def is_chief(self) -> bool:
        """The chief writes the run: task "chief", else "worker" 0 when there is no chief."""
        if self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_index == 0 and "chief" not in self.cluster

    @property
    def name(self) -> str:
        return f"{self.task_type}:{self.task_index}"


def read_tf_config(environ: Mapping[str, str] = os.environ) -> Task | None:
    """Parse $TF_CONFIG (None when unset), with errors that show the expected shape.

    >>> read_tf_config({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, '
    ...                 '"task": {"type": "worker", "index": 1}}'}).is_chief
    False
    """
    text = environ.get(TF_CONFIG_ENV, "").strip()
    if not text:
        return None
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise DistributeError(
            f"{TF_CONFIG_ENV} is not valid JSON ({err}); expected {example}"
        ) from err
    if not isinstance(raw, dict) or not isinstance(raw.get("cluster"), dict):
        raise DistributeError(f"{TF_CONFIG_ENV} needs a 'cluster' object; expected {example}")
    cluster = raw["cluster"]
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise DistributeError(
            f"{TF_CONFIG_ENV} names {unsupported} tasks: multi_worker training uses only "
            "'chief' and 'worker' tasks (no parameter servers or evaluators)"
        )
    if not all(isinstance(v, list) and v for v in cluster.values()):
        raise DistributeError(f"{TF_CONFIG_ENV}: each cluster entry must be a non-empty list")
    if len(cluster.get("chief", [])) > 1:
        raise DistributeError(f"{TF_CONFIG_ENV}: a cluster has at most one chief")
    task = raw.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise DistributeError(
            f"{TF_CONFIG_ENV}: 'task' must name this process's type (one of {sorted(cluster)}) "
            f"and index; expected {example}"
        )
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise DistributeError(
            f"{TF_CONFIG_ENV}: task index {index!r} is not in 0..{len(cluster[task['type']]) - 1}"
        )
    return Task({k: list(v) for k, v in cluster.items()}, task["type"], index)


# ------------------------------------------------------------------ strategies


@dataclass(frozen=True)
class Distribution:
    """A strategy and what the run needs to know about it (replicas, workers, who writes)."""

    strategy: tf.distribute.Strategy
    setting: str  # the config's `strategy` value
    replicas: int
    workers: int = 1
    is_chief: bool = True
    task: str = "local"
    devices: tuple[str, ...] = field(default_factory=tuple)

    def global_batch_size(self, per_replica: int) -> int:
        """Batch of one optimizer step over all replicas.

        >>> make_distribution("auto").global_batch_size(32)  # one device
        32
        """
        return per_replica * self.replicas

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for meta.json."""
        return {
            "strategy": self.setting,
            "engine": type(self.strategy).__name__,
            "replicas": self.replicas,
            "workers": self.workers,
            "task": self.task,
            "devices": list(self.devices),
        }


def make_distribution(setting: str = "auto") -> Distribution:
    """Create (once per process) the tf.distribute strategy named by `setting`; see the module doc.

    Call it before TensorFlow runs any op: multi-worker collectives must be configured at
    start-up. SKIN_TF_CPU_DEVICES is applied first.

    >>> make_distribution("auto").replicas  # on a one-GPU or CPU-only machine
    1
    """
    if setting not in STRATEGIES:
        raise DistributeError(
            f"unknown strategy {setting!r}; choose one of {', '.join(STRATEGIES)}"
        )
    configure_cpu_devices()
    task = read_tf_config()
    if task is not None and task.num_workers > 1 and setting != "multi_worker":
        print(
            f"note: {TF_CONFIG_ENV} describes {task.num_workers} workers but strategy is "
            f"{setting!r}: this process trains on its own (use --strategy multi_worker to join)",
            file=sys.stderr,
        )
    if setting not in _strategies:
        _strategies[setting] = _create(setting)
    strategy = _strategies[setting]
    if setting == "multi_worker":
        resolver = strategy.cluster_resolver
        workers = task.num_workers if task else 1
        chief = task.is_chief if task else True
        return Distribution(
            strategy, setting, strategy.num_replicas_in_sync, workers, chief,
            f"{resolver.task_type}:{resolver.task_id}", tuple(strategy.extended.worker_devices),
        )  # fmt: skip
    return Distribution(
        strategy, setting, strategy.num_replicas_in_sync, devices=_devices(strategy)
    )


def _devices(strategy: tf.distribute.Strategy) -> tuple[str, ...]:
    try:
        return tuple(strategy.extended.worker_devices)
    except RuntimeError:  # the default (one-device) strategy does not list its device
        local = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return (local[0].name,)


def _create(setting: str) -> tf.distribute.Strategy:
    if setting == "multi_worker":
        if read_tf_config() is None:
            raise DistributeError(
                f"strategy 'multi_worker' reads the cluster from {TF_CONFIG_ENV}, which is not "
                "set: set it on every machine (same cluster, its own task index), see "
                "docs/scaling.md; or use strategy 'auto' for one machine"
            )
        return _keras_multi_worker_strategy()
    if setting == "tpu":
        return _tpu_strategy()
    # Listing logical devices starts TensorFlow's runtime, which the two above must configure.
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if setting == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy(gpus)
        if not gpus and len(cpus) > 1:
            return tf.distribute.MirroredStrategy(cpus)
        return tf.distribute.get_strategy()  # the default strategy: one device, as before
    return tf.distribute.MirroredStrategy(gpus or cpus)  # "mirrored"


def _keras_multi_worker_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy whose `reduce` accepts what Keras 3's `fit` passes it.

    Keras 3.15 calls `strategy.reduce("MEAN", (x, y), axis=None)` on a whole batch structure and
    `strategy.reduce("MEAN", scalar, axis=0)` on each per-step metric; the multi-worker strategy
    rejects both ("Attempt to convert a value (PerReplica...)", "Invalid reduction dimension 0
    for input with 0 dimensions"; keras-team/keras#20585). This subclass reduces each element of a
    structure on its own and drops the axis for scalars, where reducing over replicas is what
    Keras means. Everything else is TensorFlow's own strategy.
    """
    base = tf.distribute.MultiWorkerMirroredStrategy

    class KerasMultiWorkerMirroredStrategy(base):
        def reduce(self, reduce_op, value, axis):
            def reduce_one(item):
                local = self.experimental_local_results(item)[0]
                scalar = getattr(local, "shape", None) is not None and local.shape.rank == 0
                return base.reduce(self, reduce_op, item, None if scalar else axis)

            return tf.nest.map_structure(reduce_one, value)

    # meta.json names TF's public engine (the class behind the alias is CollectiveAllReduce...)
    KerasMultiWorkerMirroredStrategy.__name__ = "MultiWorkerMirroredStrategy"
    return KerasMultiWorkerMirroredStrategy()


def _tpu_strategy() -> tf.distribute.Strategy:
    name = os.environ.get(TPU_NAME_ENV, "local")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as err:
        raise DistributeError(
            f"strategy 'tpu': no Cloud TPU found ({TPU_NAME_ENV}={name!r}): {_first_line(err)}. "
            "Run on a TPU VM (TPU_NAME unset or 'local') or set TPU_NAME to your TPU's name; "
            "see docs/scaling.md"
        ) from err
    return tf.distribute.TPUStrategy(resolver)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# ------------------------------------------------------------------ batch and learning rate


def lr_scale(replicas: int, rule: str) -> float:
    """Learning-rate multiplier for a global batch `replicas` times the config's batch.

    linear: × replicas (Goyal et al. 2017, "Accurate, large minibatch SGD"); sqrt: × √replicas
    (often steadier for Adam-type optimizers); none: × 1.

    >>> lr_scale(4, "linear"), lr_scale(4, "sqrt"), lr_scale(4, "none")
    (4.0, 2.0, 1.0)
    """
    if rule not in LR_SCALING_RULES:
        raise ValueError(f"lr_scaling={rule!r} is not one of {', '.join(LR_SCALING_RULES)}")
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    return {"linear": float(replicas), "sqrt": math.sqrt(replicas), "none": 1.0}[rule]


def scale_phases(phases: Sequence[P], replicas: int, rule: str) -> list[P]:
    """Training phases (dataclasses with learning_rate, warmup_epochs, start, end) for `replicas`.

    Each phase's rate is multiplied by `lr_scale(replicas, rule)`. When that scale is above 1
    the first phase warms up for at least one epoch (linearly from 0, as Goyal et al. ramp up
    large-batch rates) if it is longer than one epoch; a config's longer warm-up is kept.
    One replica leaves the phases unchanged.

    >>> [p.learning_rate for p in scale_phases(plan_phases(config), 2, "linear")]  # doctest: +SKIP
    [0.0006]
    """
    scale = lr_scale(replicas, rule)
    scaled = []
    for i, phase in enumerate(phases):
        warmup = phase.warmup_epochs
        if i == 0 and scale > 1 and warmup == 0 and phase.end - phase.start > 1:
            warmup = 1
        scaled.append(
            dataclasses.replace(
                phase, learning_rate=phase.learning_rate * scale, warmup_epochs=warmup
            )
        )
    return scaled


def learning_rate_record(
    base_rate: float, phases: Sequence[Any], replicas: int, rule: str
) -> dict[str, Any]:
    """What meta.json stores about the rate: rule, scale, base and effective first-phase rate.

    >>> learning_rate_record(3e-4, scale_phases(phases, 2, "linear"), 2, "linear")["scale"]
    ... # doctest: +SKIP
    2.0
    """
    return {
        "rule": rule,
        "scale": lr_scale(replicas, rule),
        "base": base_rate,
        "effective": phases[0].learning_rate,
        "warmup_epochs": phases[0].warmup_epochs,
        "phases": {p.name: p.learning_rate for p in phases},
    }


def shard_by(dataset: tf.data.Dataset, source: str) -> tf.data.Dataset:
    """Tell multi-worker input how to split `dataset` between workers.

    source="files": the dataset reads several files (TFDS, TFRecord shards): each worker reads
    its own files (AutoShardPolicy.FILE). source="data": anything else (e.g. images listed in a
    DataFrame): every worker runs the same seeded pipeline and keeps its own part of each global
    batch (AutoShardPolicy.DATA), so the steps are those of a one-device run.

    >>> train = shard_by(make_dataset(frame, 224, training=True), "data")  # doctest: +SKIP
    """
    policies = {
        "files": tf.data.experimental.AutoShardPolicy.FILE,
        "data": tf.data.experimental.AutoShardPolicy.DATA,
    }
    if source not in policies:
        raise ValueError(f"source={source!r} is not one of {', '.join(policies)}")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policies[source]
    return dataset.with_options(options)


# ------------------------------------------------------------------ failures


def wait_for_all_workers(dist: Distribution) -> None:
    """Block until every worker gets here (a one-number all-reduce); nothing to do on one worker.

    The workers meet at the end of a run, so none exits while the chief still writes results:
    a worker that leaves early looks like a crashed one to TensorFlow's coordination service.
    """
    if dist.workers > 1:
        strategy = dist.strategy

        @tf.function
        def meet() -> tf.Tensor:
            return strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)

        meet()


def is_peer_failure(error: BaseException) -> bool:
    """True for the errors collectives raise when another worker died or cannot be reached."""
    return isinstance(error, _PEER_FAILURES)


def worker_lost(error: BaseException, resume_dir: os.PathLike | str, dist: Distribution) -> str:
    """The message shown when a multi-worker run stops because a peer is gone.

    >>> worker_lost(tf.errors.UnavailableError(None, None, "task:1 stopped"), "runs/r", dist)
    ... # doctest: +SKIP
    'multi-worker training stopped on worker:0: worker:1 died or cannot be reached ...'
    """
    text = getattr(error, "message", None) or str(error)
    peers = sorted(
        {f"{job}:{task}" for job, task in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text)}
        - {dist.task}
    )
    who = ", ".join(peers) if peers else "a worker"
    detail = next(
        (line for line in text.splitlines() if "unhealthy" in line or "heartbeat" in line),
        _first_line(error),
    )
    detail = re.sub(r"\{\{.*?\}\}", "", detail).strip().rstrip(":")  # drop TF's node name
    return (
        f"multi-worker training stopped on {dist.task}: {who} died or cannot be reached "
        f"({type(error).__name__}: {detail}). The last finished epoch is backed up in "
        f"{resume_dir}/backup on the chief: start every worker again (same {TF_CONFIG_ENV}) "
        f"with `skin-tf train --resume {resume_dir}`"
    )
