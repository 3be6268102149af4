"""The CUDA engine: a graph compiled into numba.cuda kernels launched by one host function per
program (a training step, an inference pass, a gradient pass).

It is the CPU engine (`runtime/cpu.py`) with three parts replaced: programs are rendered by
`codegen/cuda.py` and their buffers are device arrays, planned once per batch size; the
optimiser update is rendered as kernels (`CudaUpdatePlan`); parameters, buffers and the
optimiser's state live on the device for the whole run (`DeviceMirror`), copied to the host
only when something on the host reads them (a checkpoint, `Model.parameters()`) and back once
after that.  Each step copies its batch in (nothing when the caller passes device arrays) and
the loss and outputs out; dropout masks are computed on the device from a per-step key.
The training loop goes further (`upload`, `device_metrics`): the training set is uploaded
once and batches are gathered from it on the device, the validation set is uploaded once and
evaluated from views of it, and the running loss and accuracy are summed on the device and
read back once per log interval.

`numba.cuda` is imported only inside functions: Numba's simulator is chosen by
NUMBA_ENABLE_CUDASIM, which must be set before Numba is first imported.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import MutableMapping

import numpy as np

from netlang.codegen.cuda import (
    CudaUpdatePlan,
    GPU,
    METRIC_TOTALS,
    SIMULATOR,
    render_gather,
    render_metrics,
    render_program,
    supported,
)
from netlang.codegen.table import input_dtype
from netlang.config import cuda_simulator
from netlang.errors import DataError, UsageError
from netlang.runtime.cpu import CompiledProgram, CpuEngine, load_program

SIMULATOR_HINT = "set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in Numba's simulator"


def cuda_module():
    """numba.cuda, when a GPU (or the simulator) can run kernels; a one-line UsageError else."""
    try:
        from numba import cuda
    except ImportError:
        raise UsageError("`device=\"cuda\"`: Numba's CUDA support is not installed "
                         "(pip install 'netlang[cuda]')") from None
    try:
        available = cuda.is_available()
    except Exception:   # a broken driver or toolkit install reads as no GPU
        available = False
    if not available:
        raise UsageError(f"`device=\"cuda\"`: no CUDA GPU is available on this machine "
                         f"({SIMULATOR_HINT}, slowly, or use `device=\"cpu\"`)")
    if cuda_simulator():
        _serialise_simulated_shared_arrays()
    return cuda


_shared_lock = threading.Lock()


def _serialise_simulated_shared_arrays() -> None:
    """Make the simulator's `cuda.shared.array` safe for the threads of one block.

    The simulator runs a block's threads as Python threads and hands each the block's shared
    array by looking it up under the calling kernel line, creating it when absent.  The lookup
    and the store are separate steps, so two threads arriving together can each create an
    array: they then write their partial sums or tiles into different memory, and a reduction
    or a tiled product reads the other's uninitialised copy (a wrong loss or a wrong output
    row, once in some fifty runs).  This replaces the method with one that looks up and
    creates under a lock, keyed as the simulator keys it (file and line of the kernel), and
    that finds the line from the caller's frame instead of a formatted stack (faster too).
    Dynamic shared memory (size 0) is one buffer already and keeps the simulator's code."""
    try:
        from numba.cuda.simulator import kernelapi
    except ImportError:   # not the simulator this was written against: leave it be
        return
    shared = getattr(kernelapi, "FakeCUDAShared", None)
    if shared is None or getattr(shared, "_netlang_serialised", False):
        return
    simulator_array = shared.array
    from numba.core import types  # lazy, as every numba import here (see above)
    from numba.np import numpy_support

    def array(self, shape, dtype, *args, **kwargs):
        if shape == 0 or args or kwargs:
            return simulator_array(self, shape, dtype, *args, **kwargs)
        frame = sys._getframe(1)
        line = (frame.f_code.co_filename, frame.f_lineno)
        with _shared_lock:
            found = self._allocations.get(line)
            if found is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                found = self._allocations[line] = np.empty(shape, dtype)
        return found

    shared.array = array
    shared._netlang_serialised = True


def use_gpu_of_process(rank: int) -> int:
    """Make GPU `rank` mod (the GPUs here) this process's, before anything is put on one: one
    process per GPU when an MPI launcher starts as many per machine; returns its number."""
    cuda = cuda_module()
    number = rank % len(cuda.gpus)
    cuda.select_device(number)
    return number


def gpu_available() -> bool:
    """Whether `--device auto` should pick the CUDA engine (a real GPU, not the simulator)."""
    if cuda_simulator():
        return False
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:
        return False


def is_device_array(value) -> bool:
    """Whether `value` is an array on the device (real or simulated), not a host array."""
    # Numba's device arrays carry `__cuda_ndarray__`; the simulator's, which have no CUDA
    # array interface, carry it too (without it they read as host arrays and were copied).
    return bool(getattr(value, "__cuda_ndarray__", False)) or \
        hasattr(value, "__cuda_array_interface__")


def launch_options() -> dict:
    """How generated programs are rendered here: small blocks and no disk cache under the
    simulator, whose kernels are plain Python."""
    simulated = cuda_simulator()
    return {"geometry": SIMULATOR if simulated else GPU, "cache": not simulated}


class DeviceMirror(MutableMapping):
    """Named arrays that live on the device, readable and writable as host NumPy arrays.

    Kernels use `device()`.  Reading an entry from the host copies every array back once and
    hands out the host copies, which the caller may write into (`p[...] = w`): the next
    `device()` copies them all up again.  So the training loop's steps never copy parameters,
    and a checkpoint or `Model.parameters()` costs one round trip."""

    def __init__(self, host: dict, cuda):
        self._cuda = cuda
        self._host = {name: np.ascontiguousarray(value) for name, value in host.items()}
        self._device = {name: cuda.to_device(value) for name, value in self._host.items()}
        self._on_host = False   # whether the host copies are the current ones

    def device(self) -> dict:
        """The arrays on the device, brought up to date with the host's writes first."""
        if self._on_host:
            for name, value in self._host.items():
                target = self._device.get(name)
                if target is None or target.shape != value.shape or target.dtype != value.dtype:
                    self._device[name] = self._cuda.to_device(np.ascontiguousarray(value))
                else:
                    target.copy_to_device(np.ascontiguousarray(value))
            self._on_host = False
        return self._device

    def _to_host(self) -> None:
        if not self._on_host:
            for name, array in self._device.items():
                array.copy_to_host(self._host[name])
            self._on_host = True

    def __getitem__(self, name):
        self._to_host()
        return self._host[name]

    def __setitem__(self, name, value):
        self._to_host()
        self._host[name] = np.ascontiguousarray(value)

    def __delitem__(self, name):
        self._to_host()
        del self._host[name]
        self._device.pop(name, None)

    def __iter__(self):
        return iter(self._host)

    def __len__(self):
        return len(self._host)


class CudaProgram(CompiledProgram):
    """A program's kernels and host function, and its device buffers (one set per batch size)."""

    target = "cuda"

    def __init__(self, graph, order, keep, dtype, function, title, update=None, mode="eval"):
        self.cuda = cuda_module()
        self._scratch = {}
        # Pinned host copies of device buffers, by the buffer's id: the buffers live as long
        # as the program (one set per batch size), so an id names one buffer.
        self._pinned = {}
        super().__init__(graph, order, keep, dtype, function, title, update=update, mode=mode)

    def render(self, graph, order, fusion, buffers, **options):
        """The program's kernels and host function (codegen/cuda.py)."""
        return render_program(graph, order, fusion, buffers, **options, **launch_options())

    def worker_count(self) -> int:
        """1: no host worker threads."""
        return 1   # the device's threads come from the launch geometry, not host workers

    def compilation(self, engine, batch: int, title: str) -> None:
        """None: the host function is plain Python, and Numba compiles each of its kernels at
        the kernel's first launch, for the types of that launch; making them ready before the
        first step is pending, so a CUDA run's first step still includes that time."""
        return None

    def make_ready(self, arguments) -> None:
        """Nothing: the host function is plain Python (see `compilation`)."""

    def allocate(self, array: np.ndarray):
        """A device copy of `array`."""
        return self.cuda.to_device(array)

    def fetch(self, array) -> np.ndarray:
        """A host copy of a device buffer, in pinned (page-locked) host memory kept for that
        buffer: the copy runs at the bus's full rate, and no memory is allocated per call.  It
        is valid until the buffer is fetched again (`gradients(copy=False)` hands it out
        as it is; every other read copies it)."""
        staging = self._pinned.get(id(array))
        if staging is None:
            staging = self.cuda.pinned_array(array.shape, dtype=array.dtype)
            self._pinned[id(array)] = staging
        array.copy_to_host(staging)
        return staging

    def engine_arrays(self, engine) -> tuple:
        """The engine's parameters and optimiser state, on the device."""
        return engine.params.device(), engine.optimizer.state.device()

    def dropout_key(self, engine, node):
        """A dropout mask's key for one call, as a scalar argument of the host function, moved
        to the engine's first example as the CPU's is (a gradient shard's rows of the whole
        batch's mask)."""
        return super().dropout_key(engine, node)[0]

    def scratch(self, key):
        """A float64 scalar on the device that the program's kernels accumulate into."""
        if key not in self._scratch:
            self._scratch[key] = self.cuda.to_device(np.zeros(1, np.float64))
        return self._scratch[key]


class DeviceMetrics:
    """The training loop's running loss and accuracy, summed on the device.

    After each step a generated program (`render_metrics`) adds the step's loss × examples
    and, for a classification head, its correct predictions to float64 totals on the device.
    The loop copies its running totals in when an epoch starts or resumes (`start`) and reads
    them back once per log interval (`read`): one small copy, and one wait for the device,
    per interval instead of the loss and outputs after every step.  The totals are summed in
    the host's order from the host's start, so they are the host's MetricAccumulator's."""

    def __init__(self, engine, scores: str | None = None, labels: str | None = None, rule=None):
        graph, grads, _, step, _ = engine._training()
        self._engine, self._step = engine, step
        scores_slot = step.slot_index(graph.graph["outputs"][scores]) if scores else None
        self._program = render_metrics(loss_slot=step.slot_index(grads.objective),
                                       scores_slot=scores_slot, labels=labels, rule=rule,
                                       dtype=np.dtype(engine.dtype).name, title=engine._title,
                                       **launch_options())
        self._function = load_program(self._program, engine._title)
        self._totals = engine.cuda.to_device(np.zeros(len(METRIC_TOTALS)))

    def start(self, totals) -> None:
        """Go on from these running totals (a MetricAccumulator's `totals()`)."""
        self._totals.copy_to_device(np.array(list(totals) + [0.0, 0.0], np.float64))

    def step(self, feeds: dict, lr: float, number: int) -> None:
        """Training step `number` of the epoch, added to the totals; nothing comes back."""
        prepared, batch = self._engine._step(feeds, lr)
        slots = self._step.slots(batch)
        args = [self._totals if arg.kind == "scratch" else
                slots[arg.key] if arg.kind == "slot" else prepared[arg.key]
                for arg in self._program.args]
        self._function(*args, batch, number)

    def read(self) -> tuple:
        """(the running totals, as `start` takes them; (step number, loss) of the first step
        whose loss was not finite, or None)."""
        values = dict(zip(METRIC_TOTALS, self._totals.copy_to_host()))
        totals = tuple(values[name] for name in METRIC_TOTALS[:4])
        if values["diverged_step"]:
            return totals, (int(values["diverged_step"]), float(values["diverged_loss"]))
        return totals, None


# A data set is uploaded whole when, together with the sets already held, it takes at most
# this share of the device memory that was free before them, once its program's buffers exist
# (the rest is for other buffers and whatever else runs on the GPU); a larger one is copied in
# batch by batch.  The training set is uploaded first: its batches are read at every step.
DATA_SET_SHARE = 0.5


class DeviceDataSet:
    """A data set held on the device for the whole run.  The training set's batches are
    gathered in each epoch's order (copied in once) by a generated kernel (`render_gather`)
    into buffers (one set per batch size) that the step reads as device feeds; the validation
    set's are taken in order as views of it (`examples`), with no copy at all."""

    def __init__(self, arrays: dict, cuda):
        self.arrays = arrays   # input name → device array of every example
        self.nbytes = sum(data.nbytes for data in arrays.values())
        self._cuda = cuda
        self._gather = load_program(render_gather(**launch_options()), "gather")
        self._buffers: dict[int, dict] = {}

    def epoch(self, order: list):
        """A function of i giving batch i of `order` (one index array per batch) as feeds."""
        indices = self._cuda.to_device(np.concatenate(order).astype(np.int64))
        starts = np.cumsum([0] + [len(index) for index in order]).tolist()

        def batch(i: int) -> dict:
            out = self._batch_buffers(len(order[i]))
            for name, data in self.arrays.items():
                self._gather(data, indices, starts[i], out[name])
            return out
        return batch

    def examples(self, start: int, stop: int) -> dict:
        """Examples start to stop as feeds: views of the set's arrays, C-contiguous as the
        kernels need them (a range of rows of a C-contiguous array is)."""
        return {name: data[start:stop] for name, data in self.arrays.items()}

    def _batch_buffers(self, size: int) -> dict:
        if size not in self._buffers:
            self._buffers[size] = {name: self._cuda.device_array((size,) + data.shape[1:],
                                                                  data.dtype)
                                   for name, data in self.arrays.items()}
        return self._buffers[size]


class CudaEngine(CpuEngine):
    """The CPU engine's programs, rendered as CUDA kernels and run on the device."""

    name = "cuda"
    kernel_noun = "CUDA kernel"
    needs_gpu = True
    program_class = CudaProgram
    update_plan_class = CudaUpdatePlan
    missing_kernels = staticmethod(supported)

    def __init__(self, graph, config=None, params: dict | None = None, *, seed: int = 0,
                 dtype=np.float32, input_grads=()):
        cuda = cuda_module()
        # Another CUDA engine's weights are shared, as CPU engines share one dict: the phases
        # of a training run (netlang/train/phased.py) step the same device arrays in turn.
        shared = params if isinstance(params, DeviceMirror) else None
        super().__init__(graph, config, params, seed=seed, dtype=dtype, input_grads=input_grads)
        self.cuda = cuda
        self.params = shared if shared is not None else DeviceMirror(self.params, cuda)
        self.optimizer.state = DeviceMirror(self.optimizer.state, cuda)
        self._data_sets = weakref.WeakSet()   # uploaded and still in use: memory not free

    # -- the training loop's hooks ---------------------------------------------------------

    def upload(self, arrays: dict, batch_size: int, outputs=None) -> DeviceDataSet | None:
        """A data set on the device (`DeviceDataSet`): the inputs the training step reads, or,
        given `outputs` (output or node names), those of the evaluation pass computing them
        (`forward(feeds, "eval", outputs)`).  None when it does not fit (DATA_SET_SHARE): each
        batch is then copied in."""
        if outputs is None:
            graph, _, _, program, _ = self._training()
        else:
            graph = self.graph
            _, _, program = self._inference(tuple(outputs), with_losses=False)
        # Noise inputs are drawn for each batch (`with_noise`), never part of a data set.
        names = [name for name in self._input_names(program) if name not in self.noise_inputs]
        program.slots(batch_size)   # the program's buffers first: it needs them either way
        size = 0
        for name in names:
            if name not in arrays:   # the program's own check names what is missing
                return None
            t = graph.type_of(graph.graph["inputs"][name])
            itemsize = np.dtype(input_dtype(t, self.dtype)).itemsize
            size += np.size(arrays[name]) * itemsize
        free, _ = self.cuda.current_context().get_memory_info()   # the simulator's: inf
        held = sum(data_set.nbytes for data_set in self._data_sets)   # no longer free
        if not held + size <= DATA_SET_SHARE * (free + held):
            return None
        on_device, _ = self._feeds(graph, {name: arrays[name] for name in names}, names)
        data_set = DeviceDataSet(on_device, self.cuda)
        self._data_sets.add(data_set)
        return data_set

    def device_metrics(self, scores: str | None = None, labels: str | None = None,
                       rule=None) -> DeviceMetrics:
        """Running training metrics on the device (`DeviceMetrics`): the loss, and with
        `scores` (an output) the predictions that match input `labels` as `rule` (a
        netlang.train.metrics.ClassRule) reads them."""
        return DeviceMetrics(self, scores, labels, rule)

    def _feeds(self, graph, feeds: dict, needed) -> tuple[dict, int]:
        """The batch on the device: host arrays are checked and copied in; device arrays (a data
        set uploaded once) are checked and used as they are."""
        on_device = {name: feeds[name] for name in needed
                     if name in feeds and is_device_array(feeds[name])}
        prepared, batch = super()._feeds(graph, {n: v for n, v in feeds.items()
                                                 if n not in on_device},
                                         [n for n in needed if n not in on_device])
        for name, value in on_device.items():
            t = graph.type_of(graph.graph["inputs"][name])
            expected = np.dtype(input_dtype(t, self.dtype))
            if tuple(value.shape[1:]) != tuple(t.shape[1:]) or value.dtype != expected:
                raise DataError(f"input `{name}` expects {expected} examples of shape "
                                f"{tuple(t.shape[1:])}, got {value.dtype} {tuple(value.shape[1:])}")
            if (prepared or on_device) and batch and value.shape[0] != batch:
                raise DataError(f"inputs disagree on the batch size: {batch} and {value.shape[0]}")
            batch = value.shape[0]
        moved = {name: self.cuda.to_device(value) for name, value in prepared.items()}
        moved.update(on_device)
        return moved, batch
