# cython: language_level=3
"""Loader of the TensorFlow capture bridge (libtfdump_tf_bridge.so).

The bridge is plain C++ compiled against the running TensorFlow (see
:mod:`tfdump_fast.bridge`, which builds it and checks its TF version). This
module only dlopen()s it and wraps its C ABI (``csrc/bridge_api.h``); it does
not import TensorFlow and no Python runs per tensor.
"""

from libc.stdint cimport int64_t, uint32_t, uintptr_t
from libc.stdlib cimport free, malloc
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlerror, dlopen, dlsym

from tfdump_fast.bridge_api cimport (
    TFDUMP_BRIDGE_API_VERSION,
    tfdump_bridge_api,
    tfdump_bridge_get_api_fn,
    tfdump_bridge_stats,
)
from tfdump_fast.engine_api cimport TFDUMP_ENGINE_API_VERSION, tfdump_engine_api
from tfdump_fast.served_api cimport (
    TFDUMP_SERVED_API_VERSION,
    tfdump_served_api,
    tfdump_served_get_api_fn,
    tfdump_served_stats,
)

from tfdump_fast.errors import TfdumpBridgeError, TfdumpError, TfdumpUsageError

# Large enough for "memcbk://tfdump_slot_<i>" with any slot index.
cdef enum:
    _URL_CAP = 128


cdef str _dlerror_text():
    cdef const char* e = dlerror()
    if e == NULL:
        return "unknown dlopen error"
    return (<bytes>e).decode("utf-8", "replace")


cdef class BridgeLibrary:
    """A loaded bridge library. Obtain one with :func:`load`.

    The library is never unloaded: TensorFlow keeps pointers to the callbacks
    it registered for as long as the process lives.

    Attributes
    ----------
    path : str
        The file that was loaded.
    tf_version : str
        The TensorFlow version the library was compiled against.
    tf_git_version : str
        ``tf.version.GIT_VERSION`` at build time (may be empty).
    max_slots : int
        How many Session.run calls can be captured concurrently.
    api_version : int
        ``TFDUMP_BRIDGE_API_VERSION`` of the library.
    """

    cdef const tfdump_bridge_api* _api
    cdef const tfdump_served_api* _served
    cdef void* _handle
    cdef readonly str path

    def __cinit__(self):
        self._api = NULL
        self._served = NULL
        self._handle = NULL

    # -- served capture (csrc/served_api.h; tfdump_fast.serve)

    cdef const tfdump_served_api* _served_api(self) except NULL:
        if self._served == NULL:
            raise TfdumpBridgeError(f"the TensorFlow bridge {self.path} has no served capture; "
                                    "rebuild it with `python -m tfdump_fast.bridge --rebuild`")
        return self._served

    def served_start(self, engine_api_address):
        """Bind served capture to an engine; False if another engine is bound."""
        cdef const tfdump_served_api* sv = self._served_api()
        cdef uintptr_t addr = <uintptr_t>int(engine_api_address)
        if addr == 0:
            raise TfdumpUsageError("engine_api_address is 0 (engine closed?)")
        cdef int rc
        with nogil:
            rc = sv.start(<const tfdump_engine_api*>addr)
        return rc == 0

    def served_add_runs(self, run_ids):
        """Hand pre-opened engine run ids to the served pool."""
        cdef const tfdump_served_api* sv = self._served_api()
        ids = [int(r) for r in run_ids]
        cdef int n = len(ids)
        if n == 0:
            return
        cdef uint32_t* buf = <uint32_t*>malloc(n * sizeof(uint32_t))
        if buf == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                buf[i] = ids[i]
            with nogil:
                sv.add_runs(buf, n)
        finally:
            free(buf)

    def served_take_idle(self, int64_t idle_us):
        """[(step_id, run_id)] of master steps idle for idle_us (all when < 0), removed."""
        cdef const tfdump_served_api* sv = self._served_api()
        cdef int64_t steps[256]
        cdef uint32_t runs[256]
        cdef int n
        out = []
        while True:
            with nogil:
                n = sv.take_idle(idle_us, steps, runs, 256)
            out.extend((steps[i], runs[i]) for i in range(n))
            if n < 256:
                return out

    def served_take_unused(self):
        """Run ids of the pool that no step took, removed."""
        cdef const tfdump_served_api* sv = self._served_api()
        cdef uint32_t runs[256]
        cdef int n
        out = []
        while True:
            with nogil:
                n = sv.take_unused(runs, 256)
            out.extend(runs[i] for i in range(n))
            if n < 256:
                return out

    def served_stop(self):
        """Unbind the engine once no TF thread submits to it."""
        cdef const tfdump_served_api* sv = self._served_api()
        with nogil:
            sv.stop()

    def served_stats(self):
        cdef const tfdump_served_api* sv = self._served_api()
        cdef tfdump_served_stats st
        with nogil:
            sv.get_stats(&st)
        return {"tensors_submitted": st.tensors_submitted, "tensors_no_run": st.tensors_no_run,
                "tensors_failed": st.tensors_failed, "steps_bound": st.steps_bound}

    def take_slot_step(self, int slot):
        """The master step id a TfdumpIdentity op saw on ``slot`` since the last call (0: none)."""
        cdef const tfdump_served_api* sv = self._served_api()
        cdef int64_t step
        with nogil:
            step = sv.take_slot_step(slot)
        return step

    @property
    def tf_version(self):
        return (<bytes>self._api.tf_version).decode("utf-8", "replace")

    @property
    def tf_git_version(self):
        if self._api.tf_git_version == NULL:
            return ""
        return (<bytes>self._api.tf_git_version).decode("utf-8", "replace")

    @property
    def max_slots(self):
        return self._api.max_slots

    @property
    def api_version(self):
        return self._api.api_version

    def acquire_slot(self, engine_api_address, uint32_t run_id):
        """Bind a free capture slot to an engine run.

        Parameters
        ----------
        engine_api_address : int
            Address of the engine's ``tfdump_engine_api`` struct (from
            ``NativeEngine.api_address()``). It must stay valid until
            :meth:`release_slot` returns.
        run_id : int
            The engine's run id that captured tensors are filed under.

        Returns
        -------
        tuple of (int, str)
            The slot index and its debug URL (``memcbk://tfdump_slot_<i>``),
            to be put into the run's ``debug_urls``.

        Raises
        ------
        TfdumpUsageError
            If the address is 0 or the engine speaks another API version.
        TfdumpError
            If all slots are busy.
        """
        cdef uintptr_t addr = <uintptr_t>int(engine_api_address)
        if addr == 0:
            raise TfdumpUsageError("engine_api_address is 0 (engine closed?)")
        cdef const tfdump_engine_api* eng = <const tfdump_engine_api*>addr
        if eng.api_version != TFDUMP_ENGINE_API_VERSION:
            raise TfdumpUsageError(
                f"engine API version {eng.api_version} does not match the "
                f"bridge loader's {TFDUMP_ENGINE_API_VERSION}; reinstall "
                "tfdump-fast so both extensions come from the same build")
        cdef char url[_URL_CAP]
        cdef int slot
        with nogil:
            slot = self._api.acquire_slot(eng, run_id, url, _URL_CAP)
        if slot < 0:
            raise TfdumpError(
                f"all {self._api.max_slots} tfdump-fast capture slots are busy: "
                "too many Session.run calls are being captured at the same "
                "time (each running call holds one slot until it returns)")
        return slot, (<bytes>url).decode("ascii")

    def release_slot(self, int slot):
        """Unbind a slot after its Session.run returned.

        Waits (without the GIL) until callbacks still running on that slot
        have finished, so the engine may be closed as soon as this returns.
        """
        with nogil:
            self._api.release_slot(slot)

    def stats(self):
        """Process-wide bridge counters.

        Returns
        -------
        dict
            ``tensors_forwarded`` (handed to an engine), ``tensors_orphaned``
            (arrived on a slot with no open run), ``tensors_failed`` (could
            not be captured); for the summary debug ops,
            ``summaries_submitted``, ``summaries_skipped`` (tensors whose
            summary is not defined: variant, resource, string, complex, ...)
            and ``summaries_muted`` (healthy, left out under
            ``mute_if_healthy``).
        """
        cdef tfdump_bridge_stats s
        with nogil:
            self._api.get_stats(&s)
        return {
            "tensors_forwarded": s.tensors_forwarded,
            "tensors_orphaned": s.tensors_orphaned,
            "tensors_failed": s.tensors_failed,
            "summaries_submitted": s.summaries_submitted,
            "summaries_skipped": s.summaries_skipped,
            "summaries_muted": s.summaries_muted,
        }

    def __repr__(self):
        return (f"<BridgeLibrary {self.path!r} tf_version={self.tf_version!r} "
                f"max_slots={self.max_slots}>")


def load(path):
    """dlopen() a bridge library and return its :class:`BridgeLibrary`.

    Parameters
    ----------
    path : str or os.PathLike
        The library file.

    Raises
    ------
    TfdumpBridgeError
        (an ``ImportError``) if the library cannot be loaded (the dynamic
        linker's message is included), lacks ``tfdump_bridge_get_api``, or
        speaks another bridge API version.
    """
    import os

    spath = os.fspath(path)
    cdef bytes bpath = os.fsencode(spath)
    cdef const char* cpath = bpath
    cdef void* handle
    with nogil:
        # RTLD_NOW: a library built for another TF fails here, with the
        # missing symbol named, rather than later inside a TF thread.
        # RTLD_LOCAL: its symbols stay private to it.
        handle = dlopen(cpath, RTLD_NOW | RTLD_LOCAL)
    if handle == NULL:
        raise TfdumpBridgeError(
            f"cannot load the tfdump-fast TensorFlow bridge {spath}: "
            f"{_dlerror_text()}")
    dlerror()  # clear any stale error before dlsym
    cdef void* sym = dlsym(handle, b"tfdump_bridge_get_api")
    if sym == NULL:
        raise TfdumpBridgeError(
            f"{spath} is not a tfdump-fast TensorFlow bridge "
            f"(no tfdump_bridge_get_api: {_dlerror_text()})")
    cdef const tfdump_bridge_api* api = (<tfdump_bridge_get_api_fn>sym)()
    if api == NULL or api.api_version != TFDUMP_BRIDGE_API_VERSION:
        found = "none" if api == NULL else str(api.api_version)
        raise TfdumpBridgeError(
            f"the TensorFlow bridge {spath} speaks bridge API version {found}, "
            f"this tfdump-fast needs {TFDUMP_BRIDGE_API_VERSION}; rebuild it "
            "with `python -m tfdump_fast.bridge --rebuild`")
    cdef BridgeLibrary lib = BridgeLibrary.__new__(BridgeLibrary)
    lib._handle = handle
    lib._api = api
    cdef void* served_sym = dlsym(handle, b"tfdump_served_get_api")
    cdef const tfdump_served_api* served = NULL
    if served_sym != NULL:
        served = (<tfdump_served_get_api_fn>served_sym)()
        if served != NULL and served.api_version != TFDUMP_SERVED_API_VERSION:
            served = NULL
    lib._served = served
    lib.path = spath
    return lib
