"""The restricted unpickler behind vaereg's torch.save reader: data.pkl read without running it.

Pickles can run arbitrary code, so data.pkl goes through an unpickler that resolves a fixed set of
globals, each to a stand-in defined here: tensors become lazy references (storage key, dtype, offset,
shape, stride), containers stay plain containers and a few harmless non-tensor globals become inert
placeholders. Nothing named by the file is ever imported or called, and torch is never imported.
Budgets (docs/limits.md) bound what one file may make it spend. The zip reader (_torch_zip_reader.py)
and the legacy reader (torch_legacy.py) share its dtype table and state-dict walk.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import IO, Any, ClassVar, NamedTuple

from vaereg_plugins._shown import escaped

from vaereg.hookspecs import ModelFormatError, ModelNotRead

#: Non-tensor globals that real Stable Diffusion checkpoints carry (Lightning's checkpoint callback
#: state, numpy scalars and arrays in training metadata; numpy moved ``core`` to ``_core`` in 2.0).
#: Each resolves to an inert placeholder that accepts any arguments and state and holds nothing, so
#: their values are lost, which is fine: only tensors matter here.
INERT_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("_codecs", "encode"),
    }
)

# torch dtype names as pickled (``torch.float16`` pickles as the global ``torch float16``) mapped to
# their safetensors spelling.
_DTYPES: Mapping[str, str] = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "complex64": "C64",
}
# Real torch dtypes with no safetensors equivalent: recognised so the error names the dtype instead of
# calling a harmless global a refused import.
_UNSUPPORTED_DTYPES = frozenset({"complex32", "complex128", "float4_e2m1fn_x2", "qint8", "quint8", "qint32"})
# Typed storage classes (the only storages before torch 2.0, still used for their dtypes) -> dtype.
_STORAGE_DTYPES: Mapping[str, str] = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_MAX_NESTING = 16
_MAX_METADATA_CHARS = 256

# ---- budgets: what one file may make the unpickler spend (docs/limits.md) ----
#: Pickle opcodes executed: time. A real checkpoint runs about 15 per tensor.
MAX_PICKLE_OPS = 4_000_000
#: Objects the pickle makes (containers, strings, numbers...): memory. About 10 per tensor.
MAX_PICKLE_OBJECTS = 1_000_000
#: Memo entries (objects the pickle stores for reuse).
MAX_PICKLE_MEMO = 1_000_000
#: How deeply tuples and frozensets may nest. Hashing or comparing a nested tuple recurses in C with no
#: depth check, so a tuple nested a million deep used as a dict key would crash the process; real
#: checkpoints nest tuples 3 deep.
MAX_PICKLE_DEPTH = 64
#: Most dimensions one tensor may have (numpy's limit; real tensors have at most 5).
MAX_DIMS = 64

# ---- stand-ins the unpickler hands out instead of the real globals ----
# Pickle's BUILD opcode sets attributes on whatever object it is given, and these stand-ins are
# shared by every load in the process, so all of them are immutable: named tuples (no __dict__, no
# __setstate__; frozen dataclasses would not do, slotted ones grow a __setstate__) or `_Inert`.


class _StorageKind(NamedTuple):
    """A storage class global; `dtype` is the torch dtype name, None for UntypedStorage."""

    dtype: str | None


class _Dtype(NamedTuple):
    """A ``torch.<dtype>`` global."""

    torch_name: str


class _Marker(NamedTuple):
    """A global that is only ever passed around, never called (``torch.Tensor`` as a type argument)."""

    qualname: str


class _Call(NamedTuple):
    """A callable global: calls `function` with the pickle's positional arguments."""

    function: Callable[..., object]

    def __call__(self, *args: object) -> object:
        return self.function(*args)


class _Storage(NamedTuple):
    """One ``('storage', kind, key, location, numel)`` persistent reference."""

    key: str
    kind: _StorageKind


class _TensorRef(NamedTuple):
    """A tensor as data.pkl describes it; offset and strides count elements of `dtype`."""

    key: str
    dtype: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Inert:
    """Stands for every `INERT_GLOBALS` entry: a class, because pickles instantiate some of them
    (NEWOBJ needs a type); takes any arguments and pickled state and keeps nothing.

    BUILD aimed at the class itself finds `__setstate__` unbound and fails, so no pickle can
    change it.
    """

    __slots__ = ()

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _is_count(value: object) -> bool:
    # torch sizes, strides and offsets are int64; anything larger is damage (and slow arithmetic).
    return type(value) is int and 0 <= value < 2**63


def _overlaps(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether two elements of the view may share storage (a zero stride from `expand`, or interleaved
    strides): then the view holds more elements than its stored bytes.

    Taken from the smallest stride up, each stride must step past everything the smaller ones reach.
    Every view slicing, transposing or permuting makes passes.
    """
    reach = 0
    for step, size in sorted((step, size) for size, step in zip(shape, stride) if size > 1):
        if step <= reach:
            return True
        reach += (size - 1) * step
    return False


def _tensor_ref(storage: object, offset: object, size: object, stride: object, dtype: str | None) -> _TensorRef:
    """Validate one rebuild call's arguments so `read` can trust them."""
    if not isinstance(storage, _Storage):
        raise ModelFormatError("data.pkl builds a tensor from something that is not a storage record")
    torch_dtype = dtype if dtype is not None else storage.kind.dtype
    if torch_dtype is None:
        raise ModelFormatError("data.pkl builds a tensor on an untyped storage without a dtype")
    if torch_dtype not in _DTYPES:
        raise ModelFormatError(f"a tensor has dtype torch.{torch_dtype}, which vaereg does not read")
    if not (
        _is_count(offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
        and all(map(_is_count, size))
        and all(map(_is_count, stride))
    ):
        raise ModelFormatError("data.pkl has a tensor with a malformed shape, stride or offset")
    if len(size) > MAX_DIMS:
        raise ModelFormatError(f"data.pkl has a tensor with {len(size)} dimensions, over the limit of {MAX_DIMS}")
    return _TensorRef(storage.key, _DTYPES[torch_dtype], offset, size, stride)  # type: ignore[arg-type]


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    metadata: object = None,
) -> _TensorRef:
    return _tensor_ref(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    dtype: object,
    metadata: object = None,
) -> _TensorRef:
    if not isinstance(dtype, _Dtype):
        raise ModelFormatError("data.pkl builds a tensor whose dtype is not a torch dtype")
    return _tensor_ref(storage, storage_offset, size, stride, dtype.torch_name)


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object, state: object = None) -> object:
    # A Parameter is its tensor plus autograd flags, which do not matter here.
    return data


def _size(dims: object) -> tuple[int, ...]:
    """``torch.Size(dims)``: a tuple of integers, and nothing else (a plain `tuple` could wrap anything)."""
    if not isinstance(dims, (tuple, list)) or not all(type(d) is int for d in dims):
        raise ModelFormatError("data.pkl builds a torch.Size from something other than integers")
    return tuple(dims)


_TENSOR_TYPE = _Marker("torch.Tensor")
_REBUILD_CALLS = (_Call(_rebuild_tensor_v2), _Call(_rebuild_tensor_v3), _Call(_rebuild_parameter))


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> object:
    # torch.save routes tensors that carry Python attributes through here; only tensor types and the
    # rebuild stand-ins may take part, and the attributes are dropped. Compared by identity: a
    # pickle can build plain tuples equal to these named tuples.
    if not any(func is call for call in _REBUILD_CALLS) or new_type is not _TENSOR_TYPE or not isinstance(args, tuple):
        raise ModelFormatError("data.pkl rebuilds a tensor subclass vaereg does not know")
    return func(*args)  # type: ignore[operator]


_GLOBALS: Mapping[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol-2 pickles keep Python 2 module names
    ("torch", "Size"): _Call(_size),
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_CALLS[0],
    ("torch._utils", "_rebuild_tensor_v3"): _REBUILD_CALLS[1],
    ("torch._utils", "_rebuild_parameter"): _REBUILD_CALLS[2],
    ("torch._utils", "_rebuild_parameter_with_state"): _REBUILD_CALLS[2],
    ("torch._tensor", "_rebuild_from_type_v2"): _Call(_rebuild_from_type_v2),
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPE,
    ("torch.storage", "UntypedStorage"): _StorageKind(None),
    **{("torch", name): _StorageKind(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _Dtype(name) for name in (*_DTYPES, *_UNSUPPORTED_DTYPES)},
    **{qualified: _Inert for qualified in INERT_GLOBALS},
}


def _refuse_buffers(unpickler: object) -> None:
    raise ModelFormatError("data.pkl uses pickle protocol 5 buffers, which torch.save never writes")


# Opcodes that make no new object: they mark, discard, reuse, fill or describe. Every other one makes one.
_NO_NEW_OBJECT = frozenset(
    op[0]
    for op in (
        pickle.STOP, pickle.POP, pickle.POP_MARK, pickle.DUP, pickle.PUT, pickle.BINPUT, pickle.LONG_BINPUT,
        pickle.MEMOIZE, pickle.GET, pickle.BINGET, pickle.LONG_BINGET, pickle.APPEND, pickle.APPENDS,
        pickle.SETITEM, pickle.SETITEMS, pickle.ADDITEMS, pickle.BUILD, pickle.PROTO, pickle.FRAME,
        pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.EMPTY_TUPLE,
    )
)
_MAKES_OBJECT = tuple(0 if code in _NO_NEW_OBJECT else 1 for code in range(256))
# Opcodes that build the hashable containers whose nesting `MAX_PICKLE_DEPTH` limits.
_NESTING = frozenset(op[0] for op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET))


def _over_budget(ops: int, objects: int, memo: int) -> ModelFormatError:
    if ops > MAX_PICKLE_OPS:
        return ModelFormatError(f"data.pkl runs over {MAX_PICKLE_OPS:,} pickle instructions")
    if objects > MAX_PICKLE_OBJECTS:
        return ModelFormatError(f"data.pkl makes over {MAX_PICKLE_OBJECTS:,} objects")
    return ModelFormatError(f"data.pkl stores over {MAX_PICKLE_MEMO:,} memo entries")


def _nesting_checked(load: Callable[[Any], None]) -> Callable[[Any], None]:
    """`load` (which builds a tuple or frozenset) followed by the depth check of what it built."""

    def run(self: _RestrictedUnpickler) -> None:
        load(self)
        self.track_depth(self.stack[-1])

    return run


#: Modules whose names a model never pickles but an attack does: they run commands, code or I/O on load.
_RUNS_CODE = frozenset({
    "os", "posix", "nt", "subprocess", "builtins", "__builtin__", "sys", "shutil", "socket", "importlib",
    "runpy", "pty", "webbrowser", "ctypes", "code", "codeop", "commands", "marshal", "pickle", "_pickle", "operator",
    "types", "functools", "asyncio", "multiprocessing", "urllib", "http", "requests", "platform",
})


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves globals only from `_GLOBALS` and persistent ids only to storage references, within budgets.

    Built on the pure-Python unpickler rather than the C one: the C unpickler sizes its memo table
    from the indices in the stream, so a few hostile bytes make it allocate gigabytes; and the
    pure-Python one runs a loop, never recursing however deep the pickle nests. Its loop is repeated in
    `load` to charge every opcode to the budgets above. Protocol 5 out-of-band buffers are refused
    (BYTEARRAY8 allocates its declared length up front).
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = {
        **pickle._Unpickler.dispatch,
        **{code: _nesting_checked(pickle._Unpickler.dispatch[code]) for code in _NESTING},
        **{opcode[0]: _refuse_buffers for opcode in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER)},
    }

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        # id -> (tuple or frozenset, its nesting depth). The object is kept so its id stays its own.
        self._depths: dict[int, tuple[object, int]] = {}

    def load(self) -> Any:
        """The unpickled object; `pickle._Unpickler.load` with each opcode charged to the budgets."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # type: ignore[attr-defined]
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack: list = []
        self.stack: list = []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch, memo, makes = self.read, self.dispatch, self.memo, _MAKES_OBJECT
        max_ops, max_objects, max_memo = MAX_PICKLE_OPS, MAX_PICKLE_OBJECTS, MAX_PICKLE_MEMO
        ops = objects = 0
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                code = key[0]
                ops += 1
                objects += makes[code]
                # One test for all three budgets (this loop runs per opcode); the memo is checked before
                # the next opcode, so it may hold one entry over its budget.
                if ops > max_ops or objects > max_objects or len(memo) > max_memo:
                    raise _over_budget(ops, objects, len(memo))
                dispatch[code](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    def track_depth(self, built: object) -> None:
        """Record how deeply the tuple or frozenset just built nests; refuse it past MAX_PICKLE_DEPTH.

        Checked as each one is built, from its children's recorded depths, so nothing ever hashes or
        compares (both recurse in C) a container nested deeper than the limit.
        """
        depths = self._depths
        deepest = 0
        for child in built:  # type: ignore[attr-defined]
            known = depths.get(id(child))
            if known is not None and known[1] > deepest:
                deepest = known[1]
        if deepest + 1 > MAX_PICKLE_DEPTH:
            raise ModelFormatError(f"data.pkl nests tuples over {MAX_PICKLE_DEPTH} deep")
        depths[id(built)] = (built, deepest + 1)

    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is None:
            wanted = escaped(f"{module}.{name}")
            if module.partition(".")[0] in _RUNS_CODE:
                # No model pickles these: the file is built to run something when loaded.
                raise ModelFormatError(
                    f"refused: the pickle wants to import {wanted}, which runs code: the file may be malicious"
                    " (nothing was run)"
                )
            # Not broken, just not a state dict: a whole pickled object (an ultralytics detector, a module)
            # that only running its code could rebuild.
            raise ModelNotRead(f"the pickle wants to import {wanted}; vaereg runs no code from a pickle")
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageKind)
            and isinstance(pid[2], str)
        ):
            raise ModelFormatError("data.pkl has a persistent reference that is not a storage record")
        return _Storage(key=pid[2], kind=pid[1])


# ---- from the unpickled tree to name -> tensor ----

#: Keys under which checkpoints nest the real state dict, most specific first.
_WRAPPER_KEYS = ("state_dict", "model", "module")


def _flatten(
    node: dict, prefix: str, out: dict[str, Any], seen: set[int], tensor_type: type, depth: int = 0
) -> None:
    """Collect tensors (`tensor_type` values) under `node`, joining nested dict keys with dots; other values
    are skipped. `seen` and `depth` keep self-referencing or absurdly deep pickles from looping or overflowing.
    """
    if id(node) in seen or depth > _MAX_NESTING:
        return
    seen.add(id(node))
    for key, value in node.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, tensor_type):
            out.setdefault(prefix + key, value)
        elif isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out, seen, tensor_type, depth + 1)


def _tensors_of(node: dict, tensor_type: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    _flatten(node, "", found, set(), tensor_type)
    return found


def _state_dict(root: object, tensor_type: type = _TensorRef) -> dict[str, Any]:
    """Find the tensors: descend through wrapper keys that hold tensors, then flatten what is there."""
    if not isinstance(root, dict):
        return {}
    node: dict = root
    for _ in range(_MAX_NESTING):
        inner = next(
            (node[k] for k in _WRAPPER_KEYS if isinstance(node.get(k), dict) and _tensors_of(node[k], tensor_type)),
            None,
        )
        if inner is None:
            break
        node = inner
    return _tensors_of(node, tensor_type)


def _scalar_metadata(root: object) -> dict[str, str]:
    """Top-level scalars such as ``global_step`` and ``epoch``, as strings; long or huge values are left out."""
    if not isinstance(root, dict):
        return {}
    found = {}
    for key, value in root.items():
        if not isinstance(key, str):
            continue
        if (isinstance(value, int) and value.bit_length() <= 64) or isinstance(value, float):
            found[key] = str(value)  # bools are ints; str() of a huge int would raise
        elif isinstance(value, str) and len(value) <= _MAX_METADATA_CHARS:
            found[key] = value
    return found
