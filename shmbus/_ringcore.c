/* shmbus._ringcore: the ring protocol of `shmbus._protocol`, compiled.
 *
 * ## Shape
 *
 * Two types with exactly `_protocol`'s Python API and rules, on the same memory layout
 * (`_ring`, `_control`), so that a process running this core and one running the pure
 * Python one share a bus:
 *
 * - `Fanout`, the emitter's side of every ring. `publish` is one call per emit: the
 *   room check of every ring, the copy of the event's slots into each, the release
 *   store of `committed`, then the doorbells of the subscribers whose sleeping flag
 *   asks for one.
 * - `Reader`, a subscriber's side of its ring. `take` is one call per recv: it finds
 *   the ready slots, hands each pickle to the unpickler as a memoryview over the slot
 *   (no copy), appends the events to the caller's list, then release-stores `tail` and
 *   posts the emitter's doorbell if it sleeps.
 *
 * `Fanout.fast_emit` and `Reader.take_one` are the usual emit and recv whole, the
 * caller's lock and checks included: in Python those cost more than the protocol.
 * `emit_method` goes one step further: it makes `EventEmitter.emit` itself a method
 * descriptor in C, with no Python frame, which hands every call it does not finish
 * whole to the Python method (and says why `recv` is not one).
 *
 * Everything that is not per event stays in Python: joining, reaping, waiting (`_wait`),
 * errors and their messages (a slot that makes no sense is handed to `Ring.slot`, which
 * says why).
 *
 * Memory comes from the Python objects: `_platform.Mapping.borrow()` gives the address,
 * the size and a token that keeps them mapped for as long as this core holds it, so no
 * order of closing the Python objects can leave an address here that points nowhere.
 * Doorbells are the posix_ipc `Semaphore` objects' own `release`, called through the C
 * API: the platform layer stays the one place that opens semaphores and checks who owns
 * them.
 *
 * ## Memory order
 *
 * Shared counters are C11 atomics on the mapping: `committed` and `tail` are stored with
 * release after the slots they cover (written, or read), and loaded with acquire before
 * those slots are touched. Between a counter stored and the other side's sleeping flag
 * read, and between a flag raised and the counter read again, stands a sequentially
 * consistent fence: a store followed by a load is reordered even on x86.
 *
 * ## Interruptions
 *
 * No bytecode runs inside `publish` (the posts are C calls into posix_ipc), so a
 * signal's handler, and the `KeyboardInterrupt` it raises, runs before or after it:
 * subscribers see every event of a call or none, and every doorbell is posted. `take`
 * calls back into Python (the unpickler, `decode`, `load_large`); whatever those raise,
 * the events already in the caller's list are consumed before the exception goes on,
 * as `_protocol` says.
 *
 * ## Why not
 *
 * - `sem_open` by name here: the platform layer opens and checks every semaphore (owner,
 *   mode), and a stand-in of it for other platforms then covers both cores.
 * - Waiting here: `_wait` owns every wait (slices, signals, the liveness checks between
 *   them), and posix_ipc already releases the GIL while it sleeps. A C loop would have to
 *   repeat all of it. The one piece here, `held_acquire`, only holds the signals back
 *   around posix_ipc's own wait, in one call instead of three from Python.
 * - A copy of each pickle into a bytes object: the unpickler reads the slot where it
 *   lies, a batch of many events included.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2,
               "shared counters need lock-free 8- and 4-byte atomics");
_Static_assert(sizeof(unsigned long long) == 8, "a counter is 8 bytes");

/* The layout, from `_ring` and `_control`: checked against them at import. */
#define RING_HEADER 128      /* _ring.HEADER_SIZE */
#define SLOT_HEADER 16       /* _ring.SLOT_HEADER_SIZE: seq u64, kind u32, length u32 */
#define RING_ADOPTED 20
#define RING_START 24
#define RING_TAIL 32
#define RING_PINNED 64
#define RING_SUB_SLEEPING 72 /* the sleeping flags (waiters on a semaphore) */
#define RING_EMITTER_SLEEPING 76
#define RING_SUB_WAITING 80  /* the wake-pipe flags (asyncio waiters) */
#define RING_EMITTER_WAITING 84
#define CONTROL_COMMITTED 16
#define CONTROL_GENERATION 32 /* moved by every subscriber that joins or leaves */
#define CONTROL_BYTES 48
#define SLOT_SIZE 512         /* _ring.SLOT_SIZE: `fast_emit` publishes what fits in one */
#define PICKLE_PROTOCOL 5     /* _codec.PROTOCOL */
#define STACK_GLOBAL 0x93     /* the pickle opcode of a reference to a class or function */
#define CONTROL_MIN_SIZE 64
#define KIND_INLINE 0
#define KIND_ARENA 1
#define KIND_SEGMENT 2
#define KIND_BATCH 3
#define LARGE_LENGTH_AT 16   /* _ring.large_length: a u64 at this offset of a REF */

typedef _Atomic uint64_t shared64;
typedef _Atomic uint32_t shared32;

static inline shared64 *
word64(uint8_t *base, size_t offset)
{
    return (shared64 *)(void *)(base + offset);
}

static inline shared32 *
word32(uint8_t *base, size_t offset)
{
    return (shared32 *)(void *)(base + offset);
}

/* The difference a - b of two sequence numbers, negative if b is ahead: the Python
   core computes with unbounded ints, and this agrees with it for any two numbers less
   than 2**63 apart. */
static inline int64_t
ahead(uint64_t a, uint64_t b)
{
    return (int64_t)(a - b);
}

/* A sleeping flag's next value: nonzero, and not the last one (`_protocol`). */
static inline uint32_t
next_number(uint32_t number)
{
    return number == UINT32_MAX ? 1 : number + 1;
}

typedef struct {
    PyObject *Undecodable;          /* shmbus._protocol.Undecodable */
    PyObject *DeserializationError; /* shmbus._errors.DeserializationError */
    PyObject *dumps;                /* pickle.dumps */
    PyObject *loads;                /* pickle.loads */
    PyObject *decode;               /* shmbus._codec.decode */
    PyObject *protocol;             /* PICKLE_PROTOCOL, as an int */
    PyObject *str_acquire;
    PyObject *str_borrow;
    PyObject *str_release;
    PyObject *str_slot;
    PyObject *Fanout;               /* the types, which the methods in C check for */
    PyObject *FastMethod;
    PyObject *Lock;
} core_state;

static core_state *
state_of(PyTypeObject *type)
{
    return (core_state *)PyType_GetModuleState(type);
}

/* -- exceptions held while the core finishes its work ------------------------------ */

#if PY_VERSION_HEX >= 0x030C0000
typedef PyObject *held_error;
static held_error hold_error(void) { return PyErr_GetRaisedException(); }
static void restore_error(held_error held) { PyErr_SetRaisedException(held); }
static void drop_error(held_error held) { Py_XDECREF(held); }
static PyObject *held_value(held_error held) { return held; }
#else
typedef struct { PyObject *type, *value, *traceback; } held_error;
static held_error
hold_error(void)
{
    held_error held;
    PyErr_Fetch(&held.type, &held.value, &held.traceback);
    PyErr_NormalizeException(&held.type, &held.value, &held.traceback);
    if (held.value != NULL && held.traceback != NULL) {
        PyException_SetTraceback(held.value, held.traceback);
    }
    return held;
}
static void restore_error(held_error held) { PyErr_Restore(held.type, held.value, held.traceback); }
static void
drop_error(held_error held)
{
    Py_XDECREF(held.type);
    Py_XDECREF(held.value);
    Py_XDECREF(held.traceback);
}
static PyObject *held_value(held_error held) { return held.value; }
#endif

/* -- memory borrowed from a `_platform.Mapping` ------------------------------------- */

typedef struct {
    uint8_t *base;
    size_t size;
    PyObject *token; /* keeps the mapping mapped while held (`Mapping.borrow`) */
} Borrowed;

/* Borrow the memory of `holder.mapping` (a Ring or a ControlBlock). */
static int
borrow(core_state *state, PyObject *holder, Borrowed *out)
{
    PyObject *mapping = PyObject_GetAttrString(holder, "mapping");
    if (mapping == NULL) {
        return -1;
    }
    PyObject *lent = PyObject_CallMethodNoArgs(mapping, state->str_borrow);
    Py_DECREF(mapping);
    if (lent == NULL) {
        return -1;
    }
    unsigned long long address = 0;
    Py_ssize_t size = 0;
    PyObject *token = NULL;
    if (!PyArg_ParseTuple(lent, "KnO;Mapping.borrow() gives (address, size, token)",
                          &address, &size, &token)) {
        Py_DECREF(lent);
        return -1;
    }
    out->base = (uint8_t *)(uintptr_t)address;
    out->size = (size_t)size;
    out->token = Py_NewRef(token);
    Py_DECREF(lent);
    return 0;
}

static int
unsigned_attr(PyObject *obj, const char *name, uint64_t *out)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    if (value == NULL) {
        return -1;
    }
    unsigned long long number = PyLong_AsUnsignedLongLong(value);
    Py_DECREF(value);
    if (number == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = number;
    return 0;
}

static int
as_u64(PyObject *value, uint64_t *out)
{
    unsigned long long number = PyLong_AsUnsignedLongLong(value);
    if (number == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = number;
    return 0;
}

static int
positional(const char *name, Py_ssize_t nargs, Py_ssize_t least, Py_ssize_t most)
{
    if (nargs < least || nargs > most) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, most, nargs);
        return 0;
    }
    return 1;
}

/* Post a doorbell: the semaphore's own `release`, bound once. */
static int
post(PyObject *release)
{
    PyObject *result = PyObject_CallNoArgs(release);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* Bumped in the child of every fork(): objects made before it belong to the parent
   (`Handle.inherited`), and their fast paths step aside for the Python that says so. */
static uint64_t forks;

static void
count_fork(void)
{
    forks++;
}

/* The clock of the rings' freshness, which lasts about half a second: a coarse one where
   there is one (Linux's ticks, macOS's approximate uptime), read in a few nanoseconds
   where the precise clock costs a tenth of a `fast_emit`. */
#if defined(CLOCK_MONOTONIC_COARSE)
#define FRESHNESS_CLOCK CLOCK_MONOTONIC_COARSE
#elif defined(CLOCK_UPTIME_RAW_APPROX)
#define FRESHNESS_CLOCK CLOCK_UPTIME_RAW_APPROX
#else
#define FRESHNESS_CLOCK CLOCK_MONOTONIC
#endif

static int64_t
freshness_clock_ns(void)
{
    struct timespec now;
    clock_gettime(FRESHNESS_CLOCK, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* ================================ Lock ============================================= */

/* A re-entrant thread lock with `threading.RLock`'s methods (`acquire`, `release`, the
   context manager), the lock of every emitter and subscription while this core runs.
   The fast paths take and give it back without a call when it is free or theirs: an
   RLock's `acquire(False)` parses its arguments and reads the clock, and with its
   `release` it cost a quarter of a small emit. A blocking `acquire` waits with the GIL
   released and runs the signal handlers when the wait is interrupted, so Ctrl-C and
   timeouts behave as with an RLock. */

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    unsigned long owner; /* the holder's thread ident, while `count` > 0 */
    unsigned long count; /* the holder's acquisitions not yet released */
} LockObject;

/* Taken (or entered again) without waiting: 1; another thread holds it: 0; -1. */
static int
lock_try(LockObject *self)
{
    unsigned long me = PyThread_get_thread_ident();
    if (self->count > 0 && self->owner == me) {
        if (self->count == ULONG_MAX) {
            PyErr_SetString(PyExc_OverflowError, "lock acquired too many times");
            return -1;
        }
        self->count++;
        return 1;
    }
    if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK) != PY_LOCK_ACQUIRED) {
        return 0;
    }
    self->owner = me;
    self->count = 1;
    return 1;
}

static void
lock_let_go(LockObject *self)
{
    if (--self->count == 0) {
        self->owner = 0;
        PyThread_release_lock(self->lock);
    }
}

static double
monotonic_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* Wait for the lock, `forever` or up to `timeout` seconds, the GIL released: 1 if
   taken, 0 if the time ran out, -1 if a signal handler raised (nothing taken). */
static int
lock_wait(LockObject *self, int forever, double timeout)
{
    double deadline = monotonic_seconds() + timeout;
    for (;;) {
        double whole = timeout * 1e6; /* rounded up: a wait never ends before its time */
        PY_TIMEOUT_T microseconds = forever ? -1
            : (PY_TIMEOUT_T)whole + ((double)(PY_TIMEOUT_T)whole < whole);
        PyLockStatus status;
        Py_BEGIN_ALLOW_THREADS
        status = PyThread_acquire_lock_timed(self->lock, microseconds, 1);
        Py_END_ALLOW_THREADS
        if (status != PY_LOCK_INTR) {
            return status == PY_LOCK_ACQUIRED;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (!forever) {
            timeout = deadline - monotonic_seconds();
            if (timeout <= 0) {
                return PyThread_acquire_lock(self->lock, NOWAIT_LOCK) == PY_LOCK_ACQUIRED;
            }
        }
    }
}

static PyObject *
Lock_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *no_keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":Lock", no_keywords)) {
        return NULL;
    }
    LockObject *self = (LockObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lock = PyThread_allocate_lock();
    if (self->lock == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
Lock_dealloc(PyObject *op)
{
    LockObject *self = (LockObject *)op;
    PyTypeObject *type = Py_TYPE(op);
    if (self->lock != NULL) {
        if (self->count > 0) {
            PyThread_release_lock(self->lock);
        }
        PyThread_free_lock(self->lock);
    }
    type->tp_free(op);
    Py_DECREF(type);
}

/* `blocking` and `timeout` as RLock takes them: 1 and how long (*forever, or *timeout
   seconds, 0 for a try), or 0 with the error. */
static int
wait_wanted(int blocking, double timeout, int *forever, double *seconds)
{
    if (isnan(timeout)) {
        PyErr_SetString(PyExc_ValueError, "timeout is NaN: give a number of seconds");
        return 0;
    }
    if (!blocking && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return 0;
    }
    if (timeout < 0 && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return 0;
    }
    if (timeout > (double)PY_TIMEOUT_MAX * 1e-6) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return 0;
    }
    *forever = blocking && timeout == -1;
    *seconds = blocking && timeout > 0 ? timeout : 0.0;
    return 1;
}

static PyObject *
Lock_acquire(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"blocking", "timeout", NULL};
    LockObject *self = (LockObject *)op;
    int blocking = 1, forever;
    double timeout = -1, seconds;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|pd:acquire", keywords, &blocking,
                                     &timeout)
        || !wait_wanted(blocking, timeout, &forever, &seconds)) {
        return NULL;
    }
    int taken = lock_try(self);
    if (taken == 0 && (forever || seconds > 0)) {
        taken = lock_wait(self, forever, seconds);
        if (taken == 1) {
            self->owner = PyThread_get_thread_ident();
            self->count = 1;
        }
    }
    return taken < 0 ? NULL : PyBool_FromLong(taken);
}

static PyObject *
Lock_release(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    LockObject *self = (LockObject *)op;
    if (self->count == 0 || self->owner != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    lock_let_go(self);
    Py_RETURN_NONE;
}

static PyObject *
Lock_exit(PyObject *op, PyObject *Py_UNUSED(args))
{
    return Lock_release(op, NULL);
}

static PyObject *
Lock_repr(PyObject *op)
{
    LockObject *self = (LockObject *)op;
    return PyUnicode_FromFormat("<%s %s owner=%lu count=%lu at %p>",
                                self->count > 0 ? "locked" : "unlocked",
                                Py_TYPE(op)->tp_name, self->count > 0 ? self->owner : 0UL,
                                self->count, op);
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1): as threading.RLock's; whether it was taken."},
    {"release", Lock_release, METH_NOARGS,
     "release(): as threading.RLock's (RuntimeError if this thread does not hold it)."},
    {"__enter__", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     "Acquire, waiting as long as it takes."},
    {"__exit__", Lock_exit, METH_VARARGS, "Release."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Lock_slots[] = {
    {Py_tp_doc, "A re-entrant thread lock, as threading.RLock, that the compiled fast\n"
                "paths take without a call (see shmbus._protocol.Lock)."},
    {Py_tp_new, Lock_new},
    {Py_tp_dealloc, Lock_dealloc},
    {Py_tp_repr, Lock_repr},
    {Py_tp_methods, Lock_methods},
    {0, NULL},
};

static PyType_Spec Lock_spec = {
    .name = "shmbus._ringcore.Lock",
    .basicsize = sizeof(LockObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Lock_slots,
};

/* ================================ Fanout ========================================== */

typedef struct {
    uint8_t *base;        /* the ring's mapping */
    size_t slots_bytes;   /* capacity * slot_size */
    uint64_t capacity;
    uint64_t slot_size;
    uint64_t start;       /* the first event this ring receives */
    uint64_t known_tail;  /* `tail` as last read: room is checked against it first */
    uint32_t posted;      /* the subscriber's wait (number) last posted for */
    long long sub_id;
    PyObject *ring;
    PyObject *token;
    PyObject *post_data;  /* ring.data.release */
} Target;

typedef struct {
    PyObject_HEAD
    uint8_t *control;
    PyObject *control_token;
    Target *targets;
    Py_ssize_t count;
    Py_ssize_t allocated;
    uint32_t waits;       /* the number of the emitter's last wait */
    PyObject *wanting;    /* a list: the subscribers waiting on their wake pipe */
    uint64_t forks;       /* `forks` when made: a fork child leaves `fast_emit` alone */
    long long generation; /* `fast_emit` publishes while the control block says this */
    int64_t fresh_until;  /* and until then (freshness_clock_ns) */
} FanoutObject;

static void
target_clear(Target *target)
{
    Py_CLEAR(target->ring);
    Py_CLEAR(target->post_data);
    Py_CLEAR(target->token); /* last: the memory may be unmapped from here on */
    target->base = NULL;
}

static Target *
find_target(FanoutObject *self, long long sub_id)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        if (self->targets[i].sub_id == sub_id) {
            return &self->targets[i];
        }
    }
    return NULL;
}

static Target *
target_or_raise(FanoutObject *self, PyObject *sub_id_obj)
{
    long long sub_id = PyLong_AsLongLong(sub_id_obj);
    if (sub_id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Target *target = find_target(self, sub_id);
    if (target == NULL) {
        PyErr_SetObject(PyExc_KeyError, sub_id_obj);
    }
    return target;
}

static int
fanout_usable(FanoutObject *self)
{
    if (self->control == NULL) {
        PyErr_SetString(PyExc_ValueError, "the ring protocol was closed");
        return 0;
    }
    return 1;
}

static int
Fanout_traverse(PyObject *op, visitproc visit, void *arg)
{
    FanoutObject *self = (FanoutObject *)op;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Py_VISIT(self->targets[i].ring);
        Py_VISIT(self->targets[i].post_data);
        Py_VISIT(self->targets[i].token);
    }
    Py_VISIT(self->control_token);
    Py_VISIT(self->wanting);
    Py_VISIT(Py_TYPE(op));
    return 0;
}

static int
Fanout_clear(PyObject *op)
{
    FanoutObject *self = (FanoutObject *)op;
    Target *targets = self->targets;
    Py_ssize_t count = self->count;
    self->targets = NULL;
    self->count = self->allocated = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        target_clear(&targets[i]);
    }
    PyMem_Free(targets);
    self->control = NULL;
    Py_CLEAR(self->control_token);
    Py_CLEAR(self->wanting);
    return 0;
}

static void
Fanout_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)Fanout_clear(op);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyObject *
Fanout_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"control", NULL};
    PyObject *control;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Fanout", keywords, &control)) {
        return NULL;
    }
    Borrowed memory;
    if (borrow(state_of(type), control, &memory) < 0) {
        return NULL;
    }
    if (memory.size < CONTROL_MIN_SIZE) {
        Py_DECREF(memory.token);
        return PyErr_Format(PyExc_ValueError, "a control block of %zu bytes is too small",
                            memory.size);
    }
    FanoutObject *self = (FanoutObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(memory.token);
        return NULL;
    }
    self->control = memory.base;
    self->control_token = memory.token;
    self->forks = forks;
    self->generation = -1;
    self->wanting = PyList_New(0);
    if (self->wanting == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
Fanout_get_committed(PyObject *op, void *Py_UNUSED(closure))
{
    FanoutObject *self = (FanoutObject *)op;
    if (!fanout_usable(self)) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(
        atomic_load_explicit(word64(self->control, CONTROL_COMMITTED), memory_order_relaxed));
}

static PyObject *
Fanout_get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((FanoutObject *)op)->control == NULL);
}

static int fresh(FanoutObject *self);

static PyObject *
Fanout_get_fresh(PyObject *op, void *Py_UNUSED(closure))
{
    FanoutObject *self = (FanoutObject *)op;
    return PyBool_FromLong(self->control != NULL && fresh(self));
}

static PyObject *
Fanout_get_wanting(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *wanting = ((FanoutObject *)op)->wanting;
    return wanting != NULL ? Py_NewRef(wanting) : PyList_New(0);
}

/* A target for `ring`, adopted at `start`: everything but the slot in the array. */
static int
target_init(core_state *state, PyObject *ring, uint64_t start, Target *out)
{
    uint64_t sub_id, capacity, slot_size;
    if (unsigned_attr(ring, "sub_id", &sub_id) < 0
        || unsigned_attr(ring, "capacity", &capacity) < 0
        || unsigned_attr(ring, "slot_size", &slot_size) < 0) {
        return -1;
    }
    if (capacity == 0 || slot_size < SLOT_HEADER || capacity > (SIZE_MAX - RING_HEADER) / slot_size) {
        PyErr_SetString(PyExc_ValueError, "the ring's capacity or slot size makes no sense");
        return -1;
    }
    PyObject *data = PyObject_GetAttrString(ring, "data");
    if (data == NULL) {
        return -1;
    }
    PyObject *post_data = PyObject_GetAttr(data, state->str_release);
    Py_DECREF(data);
    if (post_data == NULL) {
        return -1;
    }
    Borrowed memory;
    if (borrow(state, ring, &memory) < 0) {
        Py_DECREF(post_data);
        return -1;
    }
    if (memory.size < RING_HEADER + capacity * slot_size) {
        Py_DECREF(post_data);
        Py_DECREF(memory.token);
        PyErr_SetString(PyExc_ValueError, "the ring's mapping is smaller than its slots");
        return -1;
    }
    *out = (Target){
        .base = memory.base, .slots_bytes = capacity * slot_size, .capacity = capacity,
        .slot_size = slot_size, .start = start, .known_tail = 0, .posted = 0,
        .sub_id = (long long)sub_id, .ring = Py_NewRef(ring), .token = memory.token,
        .post_data = post_data,
    };
    return 0;
}

static PyObject *
Fanout_add(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    FanoutObject *self = (FanoutObject *)op;
    uint64_t start;
    if (!positional("add", nargs, 2, 2) || as_u64(args[1], &start) < 0
        || !fanout_usable(self)) {
        return NULL;
    }
    Target fresh;
    if (target_init(state_of(Py_TYPE(op)), args[0], start, &fresh) < 0) {
        return NULL;
    }
    Target *existing = find_target(self, fresh.sub_id);
    if (existing != NULL) { /* as a dict would: the new one replaces it */
        Target old = *existing;
        *existing = fresh;
        target_clear(&old);
        Py_RETURN_NONE;
    }
    if (self->count == self->allocated) {
        Py_ssize_t allocated = self->allocated ? 2 * self->allocated : 4;
        Target *grown = PyMem_Resize(self->targets, Target, (size_t)allocated);
        if (grown == NULL) {
            target_clear(&fresh);
            return PyErr_NoMemory();
        }
        self->targets = grown;
        self->allocated = allocated;
    }
    self->targets[self->count++] = fresh;
    Py_RETURN_NONE;
}

static PyObject *
Fanout_remove(PyObject *op, PyObject *sub_id_obj)
{
    FanoutObject *self = (FanoutObject *)op;
    long long sub_id = PyLong_AsLongLong(sub_id_obj);
    if (sub_id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Target *target = find_target(self, sub_id);
    if (target != NULL) {
        Target gone = *target;
        Py_ssize_t index = target - self->targets;
        memmove(target, target + 1, (size_t)(self->count - index - 1) * sizeof(Target));
        self->count--;
        target_clear(&gone); /* after it left the array: its release may run Python */
    }
    Py_RETURN_NONE;
}

static Py_ssize_t
Fanout_len(PyObject *op)
{
    return ((FanoutObject *)op)->count;
}

static uint64_t
load_tail(Target *target)
{
    return atomic_load_explicit(word64(target->base, RING_TAIL), memory_order_acquire);
}

/* Whether event `last` fits in `target` (reading `tail` again only if it must). */
static int
has_room_for(Target *target, uint64_t last)
{
    if (ahead(last - target->start, target->known_tail) < (int64_t)target->capacity) {
        return 1;
    }
    target->known_tail = load_tail(target);
    return ahead(last - target->start, target->known_tail) < (int64_t)target->capacity;
}

static PyObject *
Fanout_has_room(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    FanoutObject *self = (FanoutObject *)op;
    uint64_t seq;
    if (!positional("has_room", nargs, 2, 2) || !fanout_usable(self)
        || as_u64(args[1], &seq) < 0) {
        return NULL;
    }
    Target *target = target_or_raise(self, args[0]);
    if (target == NULL) {
        return NULL;
    }
    return PyBool_FromLong(has_room_for(target, seq));
}

static PyObject *
Fanout_unread(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    FanoutObject *self = (FanoutObject *)op;
    uint64_t seq;
    if (!positional("unread", nargs, 2, 2) || !fanout_usable(self)
        || as_u64(args[1], &seq) < 0) {
        return NULL;
    }
    Target *target = target_or_raise(self, args[0]);
    if (target == NULL) {
        return NULL;
    }
    int64_t held = ahead(seq - target->start, load_tail(target));
    if (held < 0) {
        held = 0;
    }
    if ((uint64_t)held > target->capacity) {
        held = (int64_t)target->capacity;
    }
    return PyLong_FromLongLong(held);
}

static PyObject *
Fanout_oldest_unread(PyObject *op, PyObject *sub_id)
{
    FanoutObject *self = (FanoutObject *)op;
    if (!fanout_usable(self)) {
        return NULL;
    }
    Target *target = target_or_raise(self, sub_id);
    if (target == NULL) {
        return NULL;
    }
    uint64_t unread = target->start + load_tail(target);
    uint64_t pinned = atomic_load_explicit(word64(target->base, RING_PINNED),
                                           memory_order_acquire);
    return PyLong_FromUnsignedLongLong(unread < pinned ? unread : pinned);
}

/* Copy `length` bytes of slots into `target` from where event `first` belongs: one
   copy, two where they run past the ring's end. */
static void
write_slots(Target *target, uint64_t first, const uint8_t *block, size_t length)
{
    size_t at = (size_t)(first % target->capacity) * target->slot_size;
    uint8_t *slots = target->base + RING_HEADER;
    size_t room = target->slots_bytes - at;
    if (length <= room) {
        memcpy(slots + at, block, length);
        return;
    }
    memcpy(slots + at, block, room);
    memcpy(slots, block + room, length - room);
}

/* The subscribers (ids) waiting on their wake pipe, as a list (rare: asyncio waiters).
   The ids are gathered before any object is made, so that nothing allocated here can
   run code while the rings are read. */
static PyObject *
loop_waiters(FanoutObject *self, Py_ssize_t listening)
{
    long long *ids = PyMem_New(long long, (size_t)listening);
    if (ids == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t found = 0;
    for (Py_ssize_t i = 0; i < self->count && found < listening; i++) {
        if (atomic_load_explicit(word32(self->targets[i].base, RING_SUB_WAITING),
                                 memory_order_relaxed)) {
            ids[found++] = self->targets[i].sub_id;
        }
    }
    PyObject *wanting = PyList_New(found);
    for (Py_ssize_t i = 0; wanting != NULL && i < found; i++) {
        PyObject *id = PyLong_FromLongLong(ids[i]);
        if (id == NULL) {
            Py_CLEAR(wanting);
            break;
        }
        PyList_SET_ITEM(wanting, i, id);
    }
    PyMem_Free(ids);
    return wanting;
}

/* Post each sleeping subscriber's doorbell once per wait (`again`: even if posted for
   it already), then list who waits on a wake pipe. Runs after `committed` was stored. */
static int
post_doorbells(FanoutObject *self, int again)
{
    /* `committed` before the flags: a subscriber that raised its flag before this
       either sees the counter or gets a token. */
    atomic_thread_fence(memory_order_seq_cst);
    int failed = 0;
    held_error first;
    Py_ssize_t listening = 0;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Target *target = &self->targets[i];
        uint32_t number = atomic_load_explicit(word32(target->base, RING_SUB_SLEEPING),
                                               memory_order_relaxed);
        listening += atomic_load_explicit(word32(target->base, RING_SUB_WAITING),
                                          memory_order_relaxed) != 0;
        if (number == 0 || (!again && number == target->posted)) {
            continue;
        }
        if (post(target->post_data) == 0) {
            target->posted = number; /* after the post: an error posts it again next time */
        }
        else if (!failed) { /* the first error is the caller's; every other ring is tried */
            failed = 1;
            first = hold_error();
        }
        else {
            PyErr_Clear();
        }
    }
    if (failed) {
        restore_error(first);
        return -1;
    }
    if (listening == 0) {
        if (PyList_GET_SIZE(self->wanting) != 0) {
            Py_SETREF(self->wanting, PyList_New(0));
        }
        return self->wanting == NULL ? -1 : 0;
    }
    PyObject *wanting = loop_waiters(self, listening);
    if (wanting == NULL) {
        return -1;
    }
    Py_SETREF(self->wanting, wanting);
    return 0;
}

/* Whether every ring has room for events up to `last` and for `length` bytes of slots:
   1; 0 and *full (the first ring without room); -1 with an exception. */
static int
room_everywhere(FanoutObject *self, uint64_t last, size_t length, long long *full)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Target *target = &self->targets[i];
        if (length > target->slots_bytes) {
            PyErr_SetString(PyExc_ValueError, "the events' slots are larger than a ring");
            return -1;
        }
        if (!has_room_for(target, last)) {
            *full = target->sub_id;
            return 0;
        }
    }
    return 1;
}

/* Make events up to `end` exist (their slots are written) and post the doorbells: how
   many rings got them, or NULL. */
static PyObject *
commit(FanoutObject *self, uint64_t end, uint64_t nbytes)
{
    /* The one store that makes the events exist, after their slots. */
    atomic_store_explicit(word64(self->control, CONTROL_COMMITTED), end, memory_order_release);
    shared64 *bytes = word64(self->control, CONTROL_BYTES);
    atomic_store_explicit(bytes, atomic_load_explicit(bytes, memory_order_relaxed) + nbytes,
                          memory_order_relaxed);
    if (post_doorbells(self, 0) < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(self->count);
}

static PyObject *
Fanout_publish(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    FanoutObject *self = (FanoutObject *)op;
    uint64_t count, nbytes;
    if (!positional("publish", nargs, 3, 3) || !fanout_usable(self)
        || as_u64(args[1], &count) < 0 || as_u64(args[2], &nbytes) < 0) {
        return NULL;
    }
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "publish() needs at least one event");
        return NULL;
    }
    Py_buffer block;
    if (PyObject_GetBuffer(args[0], &block, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uint64_t seq = atomic_load_explicit(word64(self->control, CONTROL_COMMITTED),
                                        memory_order_relaxed);
    long long full = 0;
    int room = room_everywhere(self, seq + count - 1, (size_t)block.len, &full);
    if (room <= 0) {
        PyBuffer_Release(&block);
        return room < 0 ? NULL : PyLong_FromLongLong(-1 - full);
    }
    for (Py_ssize_t i = 0; i < self->count; i++) {
        write_slots(&self->targets[i], seq, block.buf, (size_t)block.len);
    }
    PyBuffer_Release(&block);
    return commit(self, seq + count, nbytes);
}

/* Write one event's slot, its pickle inline, into every ring at `seq`: 0, or -1 with an
   exception if it does not fit in a ring's slots. */
static int
write_inline(FanoutObject *self, uint64_t seq, const Py_buffer *pickle)
{
    size_t length = SLOT_HEADER + (size_t)pickle->len;
    for (Py_ssize_t i = 0; i < self->count; i++) {
        if (length > self->targets[i].slot_size) {
            PyErr_SetString(PyExc_ValueError, "the pickle does not fit in a slot");
            return -1;
        }
    }
    uint32_t header[2] = {KIND_INLINE, (uint32_t)pickle->len}; /* after the u64 seq */
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Target *target = &self->targets[i];
        uint8_t *slot = target->base + RING_HEADER
                        + (size_t)(seq % target->capacity) * target->slot_size;
        memcpy(slot, &seq, 8);
        memcpy(slot + 8, header, 8);
        memcpy(slot + SLOT_HEADER, pickle->buf, (size_t)pickle->len);
    }
    return 0;
}

/* `publish_inline`: how many rings got the event, or -1 - the id of a full ring (then
   nothing was written), or NULL. */
static PyObject *
publish_one(FanoutObject *self, PyObject *payload)
{
    Py_buffer pickle;
    if (PyObject_GetBuffer(payload, &pickle, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uint64_t seq = atomic_load_explicit(word64(self->control, CONTROL_COMMITTED),
                                        memory_order_relaxed);
    long long full = 0;
    int room = room_everywhere(self, seq, SLOT_HEADER + (size_t)pickle.len, &full);
    if (room > 0 && write_inline(self, seq, &pickle) < 0) {
        room = -1;
    }
    Py_ssize_t length = pickle.len;
    PyBuffer_Release(&pickle);
    if (room <= 0) {
        return room < 0 ? NULL : PyLong_FromLongLong(-1 - full);
    }
    return commit(self, seq + 1, (uint64_t)length);
}

static PyObject *
Fanout_publish_inline(PyObject *op, PyObject *payload)
{
    FanoutObject *self = (FanoutObject *)op;
    if (!fanout_usable(self)) {
        return NULL;
    }
    return publish_one(self, payload);
}

/* -- fast_emit: the usual emit, in one call ------------------------------------------ */

/* Whether `timeout` is one `emit` takes without a word: None or a number >= 0 (an
   exact int or float; anything else goes the general way, which says what is wrong). */
static int
plain_timeout(PyObject *timeout)
{
    if (timeout == Py_None) {
        return 1;
    }
    if (PyFloat_CheckExact(timeout)) {
        return PyFloat_AS_DOUBLE(timeout) >= 0.0; /* NaN is not */
    }
    if (PyLong_CheckExact(timeout)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(timeout, &overflow);
        if (value == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        return overflow > 0 || (overflow == 0 && value >= 0);
    }
    return 0;
}

/* `_codec.plain_pickle`: the event's pickle, or None where plain pickling does not serve
   (it raised an Exception, or the pickle names `__main__`); NULL if an interruption
   (a BaseException) propagates. */
static PyObject *
plain_pickle(core_state *state, PyObject *event)
{
    PyObject *args[2] = {event, state->protocol};
    PyObject *data = PyObject_Vectorcall(state->dumps, args, 2, NULL);
    if (data == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    const char *bytes = PyBytes_AS_STRING(data);
    size_t length = (size_t)PyBytes_GET_SIZE(data);
    if (memchr(bytes, STACK_GLOBAL, length) != NULL
        && memmem(bytes, length, "__main__", 8) != NULL) {
        Py_DECREF(data);
        Py_RETURN_NONE;
    }
    return data;
}

/* `lock.acquire(False)`: 1 if taken, 0 if another thread holds it, -1 on an error. This
   core's `Lock` without a call; another lock (the other core's) through its method. */
static int
try_lock(core_state *state, PyObject *lock)
{
    if (Py_IS_TYPE(lock, (PyTypeObject *)state->Lock)) {
        return lock_try((LockObject *)lock);
    }
    PyObject *args[3] = {NULL, lock, Py_False};
    PyObject *got = PyObject_VectorcallMethod(state->str_acquire, args + 1,
                                              2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (got == NULL) {
        return -1;
    }
    int taken = got == Py_True;
    Py_DECREF(got);
    return taken;
}

/* `lock.release()`, keeping an exception already set; -1 if it fails. */
static int
unlock(core_state *state, PyObject *lock)
{
    int failing = PyErr_Occurred() != NULL;
    if (Py_IS_TYPE(lock, (PyTypeObject *)state->Lock)) {
        lock_let_go((LockObject *)lock); /* (taken by this call: it is this thread's) */
        return failing ? -1 : 0;
    }
    held_error held = hold_error();
    PyObject *args[2] = {NULL, lock};
    PyObject *result = PyObject_VectorcallMethod(state->str_release, args + 1,
                                                 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(result);
    if (failing) {
        PyErr_Clear();
        restore_error(held);
        return -1;
    }
    drop_error(held);
    return result == NULL ? -1 : 0;
}

/* Whether the rings are as the emitter last listed them (`fresh_for`). */
static int
fresh(FanoutObject *self)
{
    uint64_t generation = atomic_load_explicit(word64(self->control, CONTROL_GENERATION),
                                               memory_order_acquire);
    return self->generation >= 0 && generation == (uint64_t)self->generation
           && freshness_clock_ns() < self->fresh_until;
}

/* With the emitter's lock: publish the event if the rings are fresh and have room. How
   many rings got it; None if it was not published; NULL with the error (the doorbells
   posted again if it was committed, as `repost`). */
static PyObject *
publish_if_fresh(FanoutObject *self, PyObject *data)
{
    if (self->control == NULL || !fresh(self)) {
        Py_RETURN_NONE;
    }
    PyObject *reached = publish_one(self, data);
    if (reached == NULL) {
        held_error held = hold_error();
        if (post_doorbells(self, 1) < 0) {
            PyErr_Clear();
        }
        restore_error(held);
        return NULL;
    }
    if (PyLong_AsLongLong(reached) < 0) {
        Py_DECREF(reached);
        Py_RETURN_NONE;
    }
    return reached;
}

/* `fast_emit(event, timeout, lock)`: how many rings got it (an int), else its pickle or
   None for the general way; NULL with an exception. */
static PyObject *
fanout_fast_emit(FanoutObject *self, core_state *state, PyObject *event, PyObject *timeout,
                 PyObject *lock)
{
    if (self->control == NULL || self->forks != forks || !plain_timeout(timeout)) {
        Py_RETURN_NONE;
    }
    PyObject *data = plain_pickle(state, event);
    if (data == NULL || data == Py_None || PyBytes_GET_SIZE(data) > SLOT_SIZE - SLOT_HEADER) {
        return data;
    }
    int locked = try_lock(state, lock);
    if (locked <= 0) {
        if (locked < 0) {
            Py_CLEAR(data);
        }
        return data;
    }
    PyObject *reached = publish_if_fresh(self, data);
    if (unlock(state, lock) < 0) {
        Py_XDECREF(reached);
        Py_DECREF(data);
        return NULL;
    }
    if (reached == Py_None) {
        Py_DECREF(reached);
        return data;
    }
    Py_DECREF(data);
    return reached;
}

static PyObject *
Fanout_fast_emit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (!positional("fast_emit", nargs, 3, 3)) {
        return NULL;
    }
    return fanout_fast_emit((FanoutObject *)op, state_of(Py_TYPE(op)), args[0], args[1],
                            args[2]);
}

static PyObject *
Fanout_fresh_for(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    FanoutObject *self = (FanoutObject *)op;
    if (!positional("fresh_for", nargs, 2, 2)) {
        return NULL;
    }
    long long generation = PyLong_AsLongLong(args[0]);
    if (generation == -1 && PyErr_Occurred()) {
        return NULL;
    }
    double seconds = PyFloat_AsDouble(args[1]);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!(seconds >= 0.0)) { /* negative or NaN: not fresh at all */
        seconds = 0.0;
    }
    self->generation = generation;
    self->fresh_until = freshness_clock_ns() + (int64_t)(seconds < 1e9 ? seconds * 1e9 : 1e18);
    Py_RETURN_NONE;
}

static PyObject *
Fanout_repost(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    FanoutObject *self = (FanoutObject *)op;
    if (!fanout_usable(self) || post_doorbells(self, 1) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Fanout_before_wait(PyObject *op, PyObject *sub_id)
{
    FanoutObject *self = (FanoutObject *)op;
    if (!fanout_usable(self)) {
        return NULL;
    }
    Target *target = target_or_raise(self, sub_id);
    if (target == NULL) {
        return NULL;
    }
    self->waits = next_number(self->waits);
    atomic_store_explicit(word32(target->base, RING_EMITTER_SLEEPING), self->waits,
                          memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* the flag before the look that follows */
    Py_RETURN_NONE;
}

static PyObject *
Fanout_after_wait(PyObject *op, PyObject *sub_id_obj)
{
    FanoutObject *self = (FanoutObject *)op;
    long long sub_id = PyLong_AsLongLong(sub_id_obj);
    if (sub_id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Target *target = find_target(self, sub_id);
    if (target != NULL) {
        atomic_store_explicit(word32(target->base, RING_EMITTER_SLEEPING), 0,
                              memory_order_relaxed);
    }
    Py_RETURN_NONE;
}

static PyObject *
Fanout_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    PyObject *wanting = PyList_New(0);
    if (wanting == NULL) {
        return NULL;
    }
    (void)Fanout_clear(op);
    ((FanoutObject *)op)->wanting = wanting;
    Py_RETURN_NONE;
}

static PyMethodDef Fanout_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Fanout_add, METH_FASTCALL,
     "add(ring, start): write to `ring` from event `start` on."},
    {"remove", Fanout_remove, METH_O, "remove(sub_id): stop writing to that ring."},
    {"has_room", (PyCFunction)(void (*)(void))Fanout_has_room, METH_FASTCALL,
     "has_room(sub_id, seq): whether event `seq` fits in that ring."},
    {"unread", (PyCFunction)(void (*)(void))Fanout_unread, METH_FASTCALL,
     "unread(sub_id, seq): events before `seq` that ring holds unconsumed."},
    {"oldest_unread", Fanout_oldest_unread, METH_O,
     "oldest_unread(sub_id): the oldest event whose memory that subscriber may still read."},
    {"publish", (PyCFunction)(void (*)(void))Fanout_publish, METH_FASTCALL,
     "publish(block, count, nbytes): put `count` events into every ring, all or none;\n"
     "how many rings got them, or -1 - sub_id of the first ring without room."},
    {"publish_inline", Fanout_publish_inline, METH_O,
     "publish_inline(pickle): publish(inline_slot(committed, pickle), 1, len(pickle))\n"
     "without making the slot first: the usual emit, in one call."},
    {"fast_emit", (PyCFunction)(void (*)(void))Fanout_fast_emit, METH_FASTCALL,
     "fast_emit(event, timeout, lock): the usual emit in one call; how many rings got\n"
     "it, or, if it was not published, its pickle, or None (see shmbus._protocol)."},
    {"fresh_for", (PyCFunction)(void (*)(void))Fanout_fresh_for, METH_FASTCALL,
     "fresh_for(generation, seconds): let fast_emit publish while the control block's\n"
     "generation is that, for that long."},
    {"repost", Fanout_repost, METH_NOARGS,
     "repost(): post every sleeping subscriber's doorbell again."},
    {"before_wait", Fanout_before_wait, METH_O,
     "before_wait(sub_id): raise the emitter's sleeping flag in that ring."},
    {"after_wait", Fanout_after_wait, METH_O,
     "after_wait(sub_id): lower it (nothing if the ring was removed)."},
    {"close", Fanout_close, METH_NOARGS, "close(): let go of every ring and the control block."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Fanout_getset[] = {
    {"committed", Fanout_get_committed, NULL, "The next event's sequence number.", NULL},
    {"closed", Fanout_get_closed, NULL, "Whether close() ran.", NULL},
    {"fresh", Fanout_get_fresh, NULL,
     "Whether the caller's list of rings stands (see fresh_for).", NULL},
    {"wanting", Fanout_get_wanting, NULL,
     "After `publish`: the subscribers (ids) waiting on their wake pipe, to be woken.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Fanout_slots[] = {
    {Py_tp_doc, "The emitter's side of the rings it writes (see shmbus._protocol)."},
    {Py_tp_new, Fanout_new},
    {Py_tp_dealloc, Fanout_dealloc},
    {Py_tp_traverse, Fanout_traverse},
    {Py_tp_clear, Fanout_clear},
    {Py_tp_methods, Fanout_methods},
    {Py_tp_getset, Fanout_getset},
    {Py_sq_length, Fanout_len},
    {0, NULL},
};

static PyType_Spec Fanout_spec = {
    .name = "shmbus._ringcore.Fanout",
    .basicsize = sizeof(FanoutObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Fanout_slots,
};

/* ================================ Reader ========================================== */

typedef struct {
    PyObject_HEAD
    uint8_t *base;        /* the ring's mapping; NULL once closed */
    uint8_t *control;
    uint64_t capacity;
    uint64_t slot_size;
    int have_start;
    uint64_t start;
    uint64_t tail;        /* events consumed (this process's copy of the shared word) */
    uint64_t committed;   /* as last loaded */
    uint32_t waits;       /* the number of this subscriber's last wait */
    uint32_t posted;      /* the emitter's wait (number) last posted for */
    int emitter_waiting;
    PyObject *ring;
    PyObject *ring_token;
    PyObject *control_token;
    PyObject *post_space; /* ring.space.release */
    PyObject *parked;     /* the caller's parking place (`take_one`); NULL is None */
    PyObject *surplus;    /* the caller's leftovers, ahead of the ring; NULL is None */
    unsigned long handing; /* the thread whose `take_one` parked, until the caller clears it */
    uint64_t forks;       /* `forks` when made: a fork child leaves `take_one` alone */
} ReaderObject;

static int
reader_usable(ReaderObject *self)
{
    if (self->base == NULL) {
        PyErr_SetString(PyExc_ValueError, "the ring protocol was closed");
        return 0;
    }
    return 1;
}

static int
Reader_traverse(PyObject *op, visitproc visit, void *arg)
{
    ReaderObject *self = (ReaderObject *)op;
    Py_VISIT(self->ring);
    Py_VISIT(self->ring_token);
    Py_VISIT(self->control_token);
    Py_VISIT(self->post_space);
    Py_VISIT(self->parked);
    Py_VISIT(self->surplus);
    Py_VISIT(Py_TYPE(op));
    return 0;
}

/* `close()`: let go of the memory. `ring` stays: it is the caller's, and says nothing
   about the memory; so does `parked`, which a thread may be about to take back. */
static void
reader_let_go(ReaderObject *self)
{
    self->base = self->control = NULL;
    Py_CLEAR(self->post_space);
    Py_CLEAR(self->ring_token);
    Py_CLEAR(self->control_token);
}

static int
Reader_clear(PyObject *op)
{
    reader_let_go((ReaderObject *)op);
    Py_CLEAR(((ReaderObject *)op)->parked);
    Py_CLEAR(((ReaderObject *)op)->surplus);
    return 0;
}

static void
Reader_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)Reader_clear(op);
    Py_CLEAR(((ReaderObject *)op)->ring);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyObject *
Reader_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"ring", "control", NULL};
    PyObject *ring, *control;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:Reader", keywords, &ring, &control)) {
        return NULL;
    }
    core_state *state = state_of(type);
    ReaderObject *self = (ReaderObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->ring = Py_NewRef(ring);
    self->forks = forks;
    Borrowed ring_memory, control_memory;
    if (unsigned_attr(ring, "capacity", &self->capacity) < 0
        || unsigned_attr(ring, "slot_size", &self->slot_size) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    if (self->capacity == 0 || self->slot_size < SLOT_HEADER
        || self->capacity > (SIZE_MAX - RING_HEADER) / self->slot_size) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "the ring's capacity or slot size makes no sense");
        return NULL;
    }
    PyObject *space = PyObject_GetAttrString(ring, "space");
    if (space == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->post_space = PyObject_GetAttr(space, state->str_release);
    Py_DECREF(space);
    if (self->post_space == NULL || borrow(state, ring, &ring_memory) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->ring_token = ring_memory.token;
    if (borrow(state, control, &control_memory) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->control_token = control_memory.token;
    if (ring_memory.size < RING_HEADER + self->capacity * self->slot_size
        || control_memory.size < CONTROL_MIN_SIZE) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "a mapping is smaller than its layout");
        return NULL;
    }
    self->base = ring_memory.base;
    self->control = control_memory.base;
    return (PyObject *)self;
}

/* The first event this ring receives, once the emitter adopted it: 0 if not yet. */
static int
reader_start(ReaderObject *self)
{
    if (!self->have_start
        && atomic_load_explicit(word32(self->base, RING_ADOPTED), memory_order_acquire)) {
        self->start = atomic_load_explicit(word64(self->base, RING_START),
                                           memory_order_relaxed);
        self->have_start = 1;
    }
    return self->have_start;
}

static uint64_t
load_committed(ReaderObject *self)
{
    self->committed = atomic_load_explicit(word64(self->control, CONTROL_COMMITTED),
                                           memory_order_acquire);
    return self->committed;
}

/* The next event's number if it is committed: 1 and *seq, else 0. */
static int
reader_ready(ReaderObject *self, uint64_t *seq)
{
    if (!reader_start(self)) {
        return 0;
    }
    *seq = self->start + self->tail;
    return ahead(*seq, self->committed) < 0 || ahead(*seq, load_committed(self)) < 0;
}

static PyObject *
Reader_get_start(PyObject *op, void *Py_UNUSED(closure))
{
    ReaderObject *self = (ReaderObject *)op;
    if (self->have_start) { /* known for good, even once closed (`last_seq`) */
        return PyLong_FromUnsignedLongLong(self->start);
    }
    if (!reader_usable(self)) {
        return NULL;
    }
    if (!reader_start(self)) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLongLong(self->start);
}

static PyObject *
Reader_get_tail(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(((ReaderObject *)op)->tail);
}

static PyObject *
Reader_get_emitter_waiting(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((ReaderObject *)op)->emitter_waiting);
}

static PyObject *
Reader_get_ring(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((ReaderObject *)op)->ring);
}

static PyObject *
Reader_ready(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ReaderObject *self = (ReaderObject *)op;
    uint64_t seq;
    if (!reader_usable(self)) {
        return NULL;
    }
    if (!reader_ready(self, &seq)) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *
Reader_available(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ReaderObject *self = (ReaderObject *)op;
    if (!reader_usable(self)) {
        return NULL;
    }
    uint64_t committed = load_committed(self);
    if (!reader_start(self)) {
        return PyLong_FromLong(0);
    }
    int64_t held = ahead(committed - self->start, self->tail);
    return PyLong_FromLongLong(held > 0 ? held : 0);
}

/* Move `tail` past `count` events, then post the emitter's doorbell if it sleeps. */
static int
reader_consume(ReaderObject *self, uint64_t count)
{
    uint64_t tail = self->tail + count;
    /* After the slots were read: the emitter may write over them from here on. */
    atomic_store_explicit(word64(self->base, RING_TAIL), tail, memory_order_release);
    self->tail = tail;
    atomic_thread_fence(memory_order_seq_cst); /* `tail` before the emitter's flags */
    uint32_t number = atomic_load_explicit(word32(self->base, RING_EMITTER_SLEEPING),
                                           memory_order_relaxed);
    self->emitter_waiting = atomic_load_explicit(word32(self->base, RING_EMITTER_WAITING),
                                                 memory_order_relaxed) != 0;
    if (number != 0 && number != self->posted) {
        if (post(self->post_space) < 0) {
            return -1;
        }
        self->posted = number;
    }
    return 0;
}

/* -- decoding a slot ------------------------------------------------------------------ */

typedef struct {
    uint64_t seq;
    unsigned kind;
    uint64_t count;       /* events in the slot: a batch's, or 1 */
    uint32_t length;
    const uint8_t *payload;
    uint8_t *joined;      /* a batch that runs past the ring's end, copied whole */
} Slot;

/* Read and check the header of event `seq`'s slot, as `Ring.slot` does; 0 if it makes
   no sense (the caller then lets `Ring.slot` say why). */
static int
read_slot(ReaderObject *self, uint64_t seq, Slot *out)
{
    size_t at = RING_HEADER + (size_t)(seq % self->capacity) * self->slot_size;
    uint64_t found;
    uint32_t word, length;
    memcpy(&found, self->base + at, 8);
    memcpy(&word, self->base + at + 8, 4);
    memcpy(&length, self->base + at + 12, 4);
    unsigned kind = word & 0xFF;
    uint64_t count = (word >> 8) ? (word >> 8) : 1;
    if (found != seq || kind > KIND_BATCH
        || (uint64_t)length > count * self->slot_size - SLOT_HEADER
        || !(count == 1 || (kind == KIND_BATCH && count <= self->capacity))) {
        return 0;
    }
    *out = (Slot){.seq = seq, .kind = kind, .count = count, .length = length,
                  .payload = self->base + at + SLOT_HEADER, .joined = NULL};
    size_t end = RING_HEADER + (size_t)self->capacity * self->slot_size;
    size_t start = at + SLOT_HEADER;
    if (start + length > end) { /* a batch past the ring's end: one copy, rare */
        out->joined = PyMem_Malloc(length ? length : 1);
        if (out->joined == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(out->joined, self->base + start, end - start);
        memcpy(out->joined + (end - start), self->base + RING_HEADER,
               length - (end - start));
        out->payload = out->joined;
    }
    return 1;
}

static PyObject *
slot_bytes(const Slot *slot)
{
    return PyBytes_FromStringAndSize((const char *)slot->payload, slot->length);
}

/* Whether a view handed to the unpickler outlived the call (kept by it): then it must
   never point at memory that may be unmapped. */
static int
view_escaped(PyObject *view)
{
    return Py_REFCNT(view) > 1
           || Py_REFCNT((PyObject *)((PyMemoryViewObject *)view)->mbuf) > 1;
}

/* `loads` of the pickle in a slot, without a copy: a memoryview over the slot itself. */
static PyObject *
loads_in_place(ReaderObject *self, PyObject *loads, const Slot *slot)
{
    PyObject *view = PyMemoryView_FromMemory((char *)slot->payload, slot->length, PyBUF_READ);
    if (view == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_CallOneArg(loads, view);
    if (view_escaped(view)) {
        /* Only a `loads` that keeps its argument does this: keep the ring mapped for
           the life of the process rather than let the view read freed memory. */
        Py_XINCREF(self->ring_token);
    }
    Py_DECREF(view);
    return value;
}

/* What decoding a slot gave: one event, a batch's events (a list), or an Undecodable
   standing for the slot's `count` events. */
enum decoded { ONE_EVENT, EVENTS, UNDECODABLE };

/* `decode` again after `loads` failed (the exception is set): on a copy, since a
   traceback may keep what it was given. An Undecodable for the caller's error (a
   DeserializationError: the event fails alike twice), or NULL with the exception to
   raise: an interruption, which `decode` told apart, or what `loads` raised when the
   event decodes after all (a signal handler's exception landed in it). */
static PyObject *
decode_again(core_state *state, const Slot *slot, PyObject *decode, enum decoded *how)
{
    held_error first = hold_error();
    PyObject *copy = slot_bytes(slot);
    PyObject *value = copy ? PyObject_CallOneArg(decode, copy) : NULL;
    Py_XDECREF(copy);
    if (value == NULL) {
        drop_error(first);
        if (!PyErr_ExceptionMatches(state->DeserializationError)) {
            return NULL;
        }
        held_error error = hold_error();
        value = PyObject_CallOneArg(state->Undecodable, held_value(error));
        drop_error(error);
        *how = UNDECODABLE;
        return value;
    }
    Py_DECREF(value);
    restore_error(first);
    return NULL;
}

/* The events of an inline or batch slot (see `enum decoded`), or NULL. */
static PyObject *
decode_slot(ReaderObject *self, core_state *state, const Slot *slot, PyObject *loads,
            PyObject *decode, enum decoded *how)
{
    PyObject *value;
    if (slot->joined == NULL) {
        value = loads_in_place(self, loads, slot);
    }
    else {
        PyObject *copy = slot_bytes(slot);
        value = copy ? PyObject_CallOneArg(loads, copy) : NULL;
        Py_XDECREF(copy);
    }
    *how = ONE_EVENT;
    if (value != NULL && slot->count > 1) {
        Py_SETREF(value, PySequence_List(value)); /* as `_protocol`: inside the "try" */
        *how = EVENTS;
    }
    if (value != NULL) {
        return value;
    }
    *how = ONE_EVENT;
    return decode_again(state, slot, decode, how);
}

/* A large event, through `load_large(seq, kind, ref)`: the event, or its Undecodable;
   `*large` grows by its pickled size. */
static PyObject *
decode_large(core_state *state, const Slot *slot, PyObject *load_large, uint64_t *large,
             enum decoded *how)
{
    uint64_t length = 0;
    if (slot->length >= LARGE_LENGTH_AT + 8) {
        memcpy(&length, slot->payload + LARGE_LENGTH_AT, 8);
    }
    *large += length;
    *how = ONE_EVENT;
    PyObject *ref = slot_bytes(slot);
    if (ref == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_CallFunction(load_large, "KIO", (unsigned long long)slot->seq,
                                            slot->kind, ref);
    Py_DECREF(ref);
    if (value != NULL || !PyErr_ExceptionMatches(state->DeserializationError)) {
        return value;
    }
    held_error error = hold_error();
    value = PyObject_CallOneArg(state->Undecodable, held_value(error));
    drop_error(error);
    *how = UNDECODABLE;
    return value;
}

/* Add what a slot gave to `into`: 1, or 0 to stop before it (an Undecodable after
   other events: it is reported alone, by the next call), or -1. */
static int
add_decoded(PyObject *into, Py_ssize_t before, PyObject *value, enum decoded how,
            uint64_t count)
{
    Py_ssize_t end = PyList_GET_SIZE(into);
    switch (how) {
    case ONE_EVENT:
        return PyList_Append(into, value) < 0 ? -1 : 1;
    case EVENTS: /* a batch whole, even past `max_n` */
        return PyList_SetSlice(into, end, end, value) < 0 ? -1 : 1;
    case UNDECODABLE:
        if (end > before) {
            return 0;
        }
        for (uint64_t i = 0; i < count; i++) {
            if (PyList_Append(into, value) < 0) {
                return -1;
            }
        }
        return 1;
    }
    return -1;
}

/* Let `Ring.slot` raise the error of a slot that makes no sense. */
static void
report_slot(ReaderObject *self, core_state *state, uint64_t seq)
{
    PyObject *number = PyLong_FromUnsignedLongLong(seq);
    PyObject *result = number ? PyObject_CallMethodOneArg(self->ring, state->str_slot, number)
                              : NULL;
    Py_XDECREF(number);
    if (result != NULL) { /* it changed under us: corrupt all the same */
        Py_DECREF(result);
        PyErr_Format(PyExc_RuntimeError, "the slot of event %llu changed while read",
                     (unsigned long long)seq);
    }
}

typedef struct {
    PyObject *into, *loads, *decode, *load_large;
    Py_ssize_t max_n;
    uint64_t large_limit;
} TakeArgs;

static int
parse_take(PyObject *const *args, Py_ssize_t nargs, TakeArgs *out)
{
    if (!positional("take", nargs, 6, 6)) {
        return -1;
    }
    if (!PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "take() needs a list to put the events into");
        return -1;
    }
    out->into = args[0];
    int overflow;
    long long max_n = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (max_n == -1 && PyErr_Occurred()) {
        return -1;
    }
    /* More than a list can hold asks for all there is, as in the pure-Python core. */
    out->max_n = overflow > 0 ? PY_SSIZE_T_MAX : overflow < 0 ? 0 : (Py_ssize_t)max_n;
    out->loads = args[2];
    out->decode = args[3];
    out->load_large = args[4];
    return as_u64(args[5], &out->large_limit);
}

/* Decode ready events into `into` from `seq` on; 0, or -1 with an exception set. */
static int
take_into(ReaderObject *self, core_state *state, const TakeArgs *a, uint64_t seq)
{
    uint64_t committed = load_committed(self); /* all that is there now */
    Py_ssize_t before = PyList_GET_SIZE(a->into);
    uint64_t index = seq, large = 0;
    while (ahead(index, committed) < 0 && PyList_GET_SIZE(a->into) - before < a->max_n
           && large < a->large_limit) {
        Slot slot;
        int valid = read_slot(self, index, &slot);
        if (valid <= 0) {
            if (valid == 0) {
                report_slot(self, state, index);
            }
            return -1;
        }
        enum decoded how;
        PyObject *value = slot.kind == KIND_INLINE || slot.kind == KIND_BATCH
            ? decode_slot(self, state, &slot, a->loads, a->decode, &how)
            : decode_large(state, &slot, a->load_large, &large, &how);
        PyMem_Free(slot.joined);
        if (value == NULL) {
            return -1;
        }
        int added = add_decoded(a->into, before, value, how, slot.count);
        Py_DECREF(value);
        if (added <= 0 || how == UNDECODABLE) {
            return added < 0 ? -1 : 0;
        }
        index += slot.count;
        if (!reader_usable(self)) { /* closed by what the unpickler ran */
            return -1;
        }
    }
    return 0;
}

static PyObject *
Reader_take(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    ReaderObject *self = (ReaderObject *)op;
    core_state *state = state_of(Py_TYPE(op));
    TakeArgs a;
    uint64_t seq;
    if (parse_take(args, nargs, &a) < 0 || !reader_usable(self)) {
        return NULL;
    }
    if (!reader_ready(self, &seq)) {
        return PyLong_FromLong(0);
    }
    /* Held for the call: what the unpickler runs cannot unmap the ring under us. */
    PyObject *ring_token = Py_NewRef(self->ring_token);
    PyObject *control_token = Py_NewRef(self->control_token);
    Py_ssize_t before = PyList_GET_SIZE(a.into);
    int failed = take_into(self, state, &a, seq) < 0;
    Py_ssize_t taken = PyList_GET_SIZE(a.into) - before;
    if (taken > 0 && self->base != NULL) {
        /* Everything in the list is consumed, even when an exception goes on: an
           interruption can neither lose an event nor hand one out twice. */
        if (failed) {
            held_error held = hold_error();
            if (reader_consume(self, (uint64_t)taken) < 0) {
                PyErr_Clear();
            }
            restore_error(held);
        }
        else {
            failed = reader_consume(self, (uint64_t)taken) < 0;
        }
    }
    Py_DECREF(ring_token);
    Py_DECREF(control_token);
    return failed ? NULL : PyLong_FromSsize_t(taken);
}

/* -- take_one: the usual recv, in one call ------------------------------------------ */

/* `(seq, [event], None)`: one event as the subscription parks it. */
static PyObject *
parked_one(uint64_t seq, PyObject *event)
{
    PyObject *number = PyLong_FromUnsignedLongLong(seq);
    PyObject *events = PyList_New(1);
    PyObject *parked = number && events ? PyTuple_New(3) : NULL;
    if (parked == NULL) {
        Py_XDECREF(number);
        Py_XDECREF(events);
        return NULL;
    }
    PyList_SET_ITEM(events, 0, Py_NewRef(event));
    PyTuple_SET_ITEM(parked, 0, number);
    PyTuple_SET_ITEM(parked, 1, events);
    PyTuple_SET_ITEM(parked, 2, Py_NewRef(Py_None));
    return parked;
}

/* With the caller's lock: take the next event as `take_one` says; 1, 2 or 0, or -1 with
   an exception (nothing consumed). */
static int
take_one_locked(ReaderObject *self, core_state *state)
{
    uint64_t seq;
    if (self->base == NULL || self->parked != NULL || self->surplus != NULL
        || self->handing != 0 || !reader_ready(self, &seq)) {
        return 0;
    }
    Slot slot;
    int valid = read_slot(self, seq, &slot);
    if (valid <= 0 || slot.kind != KIND_INLINE || slot.joined != NULL) {
        PyMem_Free(valid > 0 ? slot.joined : NULL);
        return valid < 0 ? -1 : 0; /* the general way says what is wrong, or takes it */
    }
    /* Held for the call: what the unpickler runs cannot unmap the ring under us. */
    PyObject *ring_token = Py_NewRef(self->ring_token);
    PyObject *control_token = Py_NewRef(self->control_token);
    uint64_t tail = self->tail;
    int result = 0;
    PyObject *event = loads_in_place(self, state->loads, &slot);
    if (event == NULL) {
        enum decoded how;
        PyObject *undecodable = decode_again(state, &slot, state->decode, &how);
        result = undecodable == NULL ? -1 : 0; /* the event's own fault: the general way */
        Py_XDECREF(undecodable);
    }
    else if (self->base != NULL && self->tail == tail && self->parked == NULL) {
        /* (otherwise what the unpickler ran closed the ring, or received) */
        PyObject *parked = parked_one(seq, event);
        if (parked == NULL) {
            result = -1;
        }
        else {
            self->parked = parked;
            self->handing = PyThread_get_thread_ident();
            if (reader_consume(self, 1) < 0) {
                PyErr_Clear(); /* a sleeping emitter looks again within a slice */
            }
            result = self->emitter_waiting ? 2 : 1;
        }
    }
    Py_XDECREF(event);
    Py_DECREF(ring_token);
    Py_DECREF(control_token);
    return result;
}

static PyObject *
Reader_take_one(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    ReaderObject *self = (ReaderObject *)op;
    core_state *state = state_of(Py_TYPE(op));
    uint64_t seq;
    if (!positional("take_one", nargs, 2, 2)) {
        return NULL;
    }
    if (self->base == NULL || self->forks != forks || self->parked != NULL
        || self->surplus != NULL || self->handing != 0 || !plain_timeout(args[1])
        || !reader_ready(self, &seq)) {
        return PyLong_FromLong(0);
    }
    int locked = try_lock(state, args[0]);
    if (locked <= 0) {
        return locked < 0 ? NULL : PyLong_FromLong(0);
    }
    int taken = take_one_locked(self, state);
    if (unlock(state, args[0]) < 0 || taken < 0) {
        return NULL;
    }
    return PyLong_FromLong(taken);
}

/* `parked` and `surplus`: the caller's places, kept for it (closure: the field's offset;
   NULL stands for None). */
static PyObject *
Reader_get_held(PyObject *op, void *closure)
{
    PyObject *held = *(PyObject **)(void *)((char *)op + (uintptr_t)closure);
    return Py_NewRef(held != NULL ? held : Py_None);
}

static int
Reader_set_held(PyObject *op, PyObject *value, void *closure)
{
    PyObject **field = (PyObject **)(void *)((char *)op + (uintptr_t)closure);
    Py_XSETREF(*field, value == NULL || value == Py_None ? NULL : Py_NewRef(value));
    return 0;
}

static PyObject *
Reader_get_handing(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(((ReaderObject *)op)->handing);
}

static int
Reader_set_handing(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    unsigned long handing = value == NULL ? 0 : PyLong_AsUnsignedLong(value);
    if (handing == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    ((ReaderObject *)op)->handing = handing;
    return 0;
}

static PyObject *
Reader_resync(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ReaderObject *self = (ReaderObject *)op;
    if (!reader_usable(self)) {
        return NULL;
    }
    self->tail = atomic_load_explicit(word64(self->base, RING_TAIL), memory_order_relaxed);
    if (!reader_start(self)) {
        PyErr_SetString(PyExc_AssertionError, "resync before the ring was adopted");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(self->start + self->tail);
}

static PyObject *
Reader_slot(PyObject *op, PyObject *seq)
{
    ReaderObject *self = (ReaderObject *)op;
    if (!reader_usable(self)) {
        return NULL;
    }
    return PyObject_CallMethodOneArg(self->ring, state_of(Py_TYPE(op))->str_slot, seq);
}

static PyObject *
Reader_advance(PyObject *op, PyObject *count_obj)
{
    ReaderObject *self = (ReaderObject *)op;
    uint64_t count;
    if (!reader_usable(self) || as_u64(count_obj, &count) < 0
        || reader_consume(self, count) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Reader_pin(PyObject *op, PyObject *seq_obj)
{
    ReaderObject *self = (ReaderObject *)op;
    uint64_t seq;
    if (!reader_usable(self) || as_u64(seq_obj, &seq) < 0) {
        return NULL;
    }
    atomic_store_explicit(word64(self->base, RING_PINNED), seq, memory_order_release);
    Py_RETURN_NONE;
}

static PyObject *
Reader_before_wait(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ReaderObject *self = (ReaderObject *)op;
    if (!reader_usable(self)) {
        return NULL;
    }
    self->waits = next_number(self->waits);
    atomic_store_explicit(word32(self->base, RING_SUB_SLEEPING), self->waits,
                          memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* the flag before the look */
    return Reader_ready(op, NULL);
}

static PyObject *
Reader_after_wait(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ReaderObject *self = (ReaderObject *)op;
    if (!reader_usable(self)) {
        return NULL;
    }
    atomic_store_explicit(word32(self->base, RING_SUB_SLEEPING), 0, memory_order_relaxed);
    Py_RETURN_NONE;
}

static PyObject *
Reader_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    reader_let_go((ReaderObject *)op);
    Py_RETURN_NONE;
}

static PyMethodDef Reader_methods[] = {
    {"ready", Reader_ready, METH_NOARGS,
     "ready(): the next event's sequence number if it is committed, else None."},
    {"available", Reader_available, METH_NOARGS,
     "available(): events committed and not consumed."},
    {"take", (PyCFunction)(void (*)(void))Reader_take, METH_FASTCALL,
     "take(into, max_n, loads, decode, load_large, large_limit): decode up to max_n\n"
     "ready events into `into`, then consume them all at once; how many."},
    {"take_one", (PyCFunction)(void (*)(void))Reader_take_one, METH_FASTCALL,
     "take_one(lock, timeout): the usual recv in one call: the next small event parked\n"
     "in `parked`; 1, 2 (the emitter's loop waits), or 0 (see shmbus._protocol)."},
    {"resync", Reader_resync, METH_NOARGS,
     "resync(): take `tail` from the ring again; the next event's sequence number."},
    {"slot", Reader_slot, METH_O, "slot(seq): (kind, count, payload) of that event's slot."},
    {"advance", Reader_advance, METH_O, "advance(count): consume the next `count` events."},
    {"pin", Reader_pin, METH_O, "pin(seq): keep the large-event memory of events from seq on."},
    {"before_wait", Reader_before_wait, METH_NOARGS,
     "before_wait(): raise the sleeping flag, then look once more (as ready())."},
    {"after_wait", Reader_after_wait, METH_NOARGS, "after_wait(): lower the sleeping flag."},
    {"close", Reader_close, METH_NOARGS, "close(): let go of the ring and the control block."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"start", Reader_get_start, NULL,
     "The first event this ring receives; None until the emitter adopted it.", NULL},
    {"tail", Reader_get_tail, NULL, "Events consumed from this ring.", NULL},
    {"emitter_waiting", Reader_get_emitter_waiting, NULL,
     "After `take` or `advance`: the emitter waits on its wake pipe for room here.", NULL},
    {"ring", Reader_get_ring, NULL, "The ring read.", NULL},
    {"parked", Reader_get_held, Reader_set_held,
     "The caller's parking place: what `take_one` consumed and the caller has not\n"
     "handed out yet. The protocol only stores it.",
     (void *)(uintptr_t)offsetof(ReaderObject, parked)},
    {"surplus", Reader_get_held, Reader_set_held,
     "The caller's leftovers, consumed ahead of `parked`: `take_one` does nothing\n"
     "while it holds any. The protocol only stores it.",
     (void *)(uintptr_t)offsetof(ReaderObject, surplus)},
    {"handing", Reader_get_handing, Reader_set_handing,
     "The thread (ident) whose `take_one` parked an event and has not taken it back\n"
     "(the caller clears it); 0 if none.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Reader_slots[] = {
    {Py_tp_doc, "A subscriber's side of its ring (see shmbus._protocol)."},
    {Py_tp_new, Reader_new},
    {Py_tp_dealloc, Reader_dealloc},
    {Py_tp_traverse, Reader_traverse},
    {Py_tp_clear, Reader_clear},
    {Py_tp_methods, Reader_methods},
    {Py_tp_getset, Reader_getset},
    {0, NULL},
};

static PyType_Spec Reader_spec = {
    .name = "shmbus._ringcore.Reader",
    .basicsize = sizeof(ReaderObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Reader_slots,
};

/* ============================ the methods in C ===================================== */

/* `emit_method`: an emitter's `emit` as a method descriptor whose usual call is all C:
   no Python frame, which costs as much as the rest of such a call. It reads the
   instance's attributes that the class names for it, and hands every call it does not
   finish whole to `general`, the Python method it stands for, with the same arguments.
   `_protocol.emit_method` is its pure-Python twin: `general` alone, whose own fast path
   calls `fast_emit`.

   Why not `recv` as well: the interpreter runs pending signal handlers right after a
   call into C returns, before the caller stores the result (3.11's CALL checks the eval
   breaker; a Python function's return does not). A KeyboardInterrupt there would drop
   an event already consumed. So `recv` stays a Python method, whose last steps (taking
   the parked event back and returning it) contain no call. An `emit` interrupted there
   has delivered its event, as one interrupted inside the Python method had. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *general;  /* the method, whole: every call not finished here */
    PyObject *names;    /* a tuple of the instance's attributes it reads (see below) */
    PyObject *str_timeout;
} FastMethodObject;

/* The call's event and timeout; 0 if the call is not the usual `emit(event[, timeout=])`. */
static int
usual_call(FastMethodObject *self, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames, PyObject **timeout)
{
    *timeout = Py_None;
    if (nargs != 2) {
        return 0;
    }
    Py_ssize_t count = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyTuple_GET_ITEM(kwnames, i) != self->str_timeout) {
            return 0; /* a name the general way must judge */
        }
        *timeout = args[nargs + i];
    }
    return 1;
}

/* The instance's `__dict__` (new), or NULL without an error if it has none. Its items
   are read directly: a full attribute lookup per name cost more than the frame saved. */
static PyObject *
instance_dict(PyObject *instance)
{
    PyObject *dict = PyObject_GenericGetDict(instance, NULL);
    if (dict == NULL || !PyDict_CheckExact(dict)) {
        PyErr_Clear();
        Py_CLEAR(dict);
    }
    return dict;
}

/* The instance's attribute named `names[which]`: from `dict` if it is there (the
   classes served keep no descriptor under these names), else looked up in full. */
static PyObject *
attribute(FastMethodObject *self, PyObject *dict, PyObject *instance, Py_ssize_t which)
{
    PyObject *name = PyTuple_GET_ITEM(self->names, which);
    if (dict != NULL) {
        PyObject *value = PyDict_GetItemWithError(dict, name);
        if (value != NULL) {
            return Py_NewRef(value);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_GetAttr(instance, name);
}

/* -- emit: names (fanout, lock, wake, declined, *unless) --------------------------- */

#define EMIT_NAMES 4 /* before the `unless` ones */

/* 1 if every `unless` attribute of the instance is false, 0 if one is true, -1. */
static int
none_true(FastMethodObject *self, PyObject *dict, PyObject *instance)
{
    for (Py_ssize_t i = EMIT_NAMES; i < PyTuple_GET_SIZE(self->names); i++) {
        PyObject *value = attribute(self, dict, instance, i);
        int truth = value == NULL ? -1 : PyObject_IsTrue(value);
        Py_XDECREF(value);
        if (truth != 0) {
            return truth < 0 ? -1 : 0;
        }
    }
    return 1;
}

/* `fast_emit`; then, if it published, the named wake if a subscriber listens on its
   wake pipe, and how many rings got it; else the named `declined(event, pickle or
   None, timeout)`, the general way, which does not pickle again. */
static PyObject *
emit_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FastMethodObject *self = (FastMethodObject *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *timeout;
    if (!usual_call(self, args, nargs, kwnames, &timeout)) {
        return PyObject_Vectorcall(self->general, args, nargsf, kwnames);
    }
    PyObject *instance = args[0];
    PyObject *dict = instance_dict(instance);
    int usual = none_true(self, dict, instance);
    if (usual <= 0) {
        Py_XDECREF(dict);
        return usual < 0 ? NULL : PyObject_Vectorcall(self->general, args, nargsf, kwnames);
    }
    PyObject *fanout = attribute(self, dict, instance, 0);
    PyObject *lock = fanout == NULL ? NULL : attribute(self, dict, instance, 1);
    Py_XDECREF(dict);
    if (lock == NULL) {
        Py_XDECREF(fanout);
        return NULL;
    }
    core_state *state = state_of(Py_TYPE(op));
    if (!Py_IS_TYPE(fanout, (PyTypeObject *)state->Fanout)) { /* the other core's */
        Py_DECREF(lock);
        Py_DECREF(fanout);
        return PyObject_Vectorcall(self->general, args, nargsf, kwnames);
    }
    PyObject *done = fanout_fast_emit((FanoutObject *)fanout, state, args[1], timeout, lock);
    PyObject *wanting = ((FanoutObject *)fanout)->wanting;
    int wanted = done != NULL && wanting != NULL && PyList_GET_SIZE(wanting) != 0;
    Py_DECREF(lock);
    Py_DECREF(fanout);
    if (done == NULL) {
        return NULL;
    }
    if (PyLong_CheckExact(done)) {
        if (wanted) {
            PyObject *woken = PyObject_CallMethodNoArgs(instance,
                                                        PyTuple_GET_ITEM(self->names, 2));
            if (woken == NULL) {
                Py_DECREF(done);
                return NULL;
            }
            Py_DECREF(woken);
        }
        return done;
    }
    PyObject *declined = PyObject_GetAttr(instance, PyTuple_GET_ITEM(self->names, 3));
    PyObject *result = NULL;
    if (declined != NULL) {
        PyObject *call[3] = {args[1], done, timeout};
        result = PyObject_Vectorcall(declined, call, 3, NULL);
        Py_DECREF(declined);
    }
    Py_DECREF(done);
    return result;
}

/* -- the descriptor ---------------------------------------------------------------- */

static PyObject *
FastMethod_get(PyObject *op, PyObject *instance, PyObject *Py_UNUSED(owner))
{
    if (instance == NULL || instance == Py_None) {
        return Py_NewRef(op);
    }
    return PyMethod_New(op, instance);
}

static PyObject *
emit_method(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"general", "fanout", "lock", "wake", "declined", "unless",
                               NULL};
    PyObject *general, *fanout, *lock, *wake, *declined, *unless;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O$UUUUO!:emit_method", keywords,
                                     &general, &fanout, &lock, &wake, &declined,
                                     &PyTuple_Type, &unless)) {
        return NULL;
    }
    if (!PyCallable_Check(general)) {
        PyErr_SetString(PyExc_TypeError, "emit_method: general must be callable");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)((core_state *)PyModule_GetState(module))->FastMethod;
    FastMethodObject *self = (FastMethodObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = emit_vectorcall;
    self->general = Py_NewRef(general);
    self->str_timeout = PyUnicode_InternFromString("timeout");
    PyObject *first = PyTuple_Pack(EMIT_NAMES, fanout, lock, wake, declined);
    self->names = first == NULL ? NULL : PySequence_Concat(first, unless);
    Py_XDECREF(first);
    if (self->str_timeout == NULL || self->names == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->names); i++) {
        PyObject **name = &PyTuple_GET_ITEM(self->names, i);
        if (!PyUnicode_CheckExact(*name)) {
            PyErr_SetString(PyExc_TypeError, "emit_method: attribute names must be str");
            Py_DECREF(self);
            return NULL;
        }
        PyUnicode_InternInPlace(name); /* (the tuple is new: nobody else holds it) */
    }
    return (PyObject *)self;
}

static int
FastMethod_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((FastMethodObject *)op)->general);
    return 0;
}

static int
FastMethod_clear(PyObject *op)
{
    FastMethodObject *self = (FastMethodObject *)op;
    Py_CLEAR(self->general);
    Py_CLEAR(self->names);
    Py_CLEAR(self->str_timeout);
    return 0;
}

static void
FastMethod_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)FastMethod_clear(op);
    type->tp_free(op);
    Py_DECREF(type);
}

/* What `help()`, `inspect.signature` and tracebacks read are `general`'s. */
static PyObject *
FastMethod_general_attribute(PyObject *op, void *closure)
{
    PyObject *general = ((FastMethodObject *)op)->general;
    if (general == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_GetAttrString(general, (const char *)closure);
}

static PyGetSetDef FastMethod_getset[] = {
    {"__doc__", FastMethod_general_attribute, NULL, NULL, "__doc__"},
    {"__name__", FastMethod_general_attribute, NULL, NULL, "__name__"},
    {"__qualname__", FastMethod_general_attribute, NULL, NULL, "__qualname__"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef FastMethod_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(FastMethodObject, vectorcall), READONLY,
     NULL},
    {"__wrapped__", T_OBJECT, offsetof(FastMethodObject, general), READONLY,
     "The method whole, which every call not finished here goes to."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot FastMethod_slots[] = {
    {Py_tp_dealloc, FastMethod_dealloc},
    {Py_tp_traverse, FastMethod_traverse},
    {Py_tp_clear, FastMethod_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, FastMethod_get},
    {Py_tp_getset, FastMethod_getset},
    {Py_tp_members, FastMethod_members},
    {0, NULL},
};

static PyType_Spec FastMethod_spec = {
    .name = "shmbus._ringcore.FastMethod",
    .basicsize = sizeof(FastMethodObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = FastMethod_slots,
};

/* ================================ the held wait ==================================== */

/* The signals a wait in the main thread holds back: every one but those a thread raises
   itself and the two that cannot be held (`_wait._ASYNC_SIGNALS`, the same set). */
static void
asynchronous_signals(sigset_t *set)
{
    static const int raised_by_the_thread[] = {SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGFPE,
                                               SIGILL, SIGTRAP, SIGABRT, SIGSYS};
    sigfillset(set);
    for (size_t i = 0; i < sizeof(raised_by_the_thread) / sizeof(int); i++) {
        sigdelset(set, raised_by_the_thread[i]);
    }
}

/* `acquire(timeout)` with the asynchronous signals held back, then the mask put back and
   the handlers of the signals that came meanwhile run, their exception winning: what
   `_wait.TimedWaiter` does in Python with three calls (the last of which builds a set of
   every held signal), in one, with no bytecode between the mask and its restoring. The
   wait itself stays posix_ipc's, which releases the GIL while it sleeps. */
static PyObject *
held_acquire(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (!positional("held_acquire", nargs, 2, 2)) {
        return NULL;
    }
    sigset_t hold, previous;
    asynchronous_signals(&hold);
    int err = pthread_sigmask(SIG_BLOCK, &hold, &previous);
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *result = PyObject_CallOneArg(args[0], args[1]);
    held_error failure;
    if (result == NULL) {
        failure = hold_error();
    }
    (void)pthread_sigmask(SIG_SETMASK, &previous, NULL); /* what came is delivered now */
    if (PyErr_CheckSignals() < 0) {
        if (result == NULL) {
            drop_error(failure);
        }
        Py_XDECREF(result);
        return NULL;
    }
    if (result == NULL) {
        restore_error(failure);
    }
    return result;
}

static PyMethodDef ringcore_functions[] = {
    {"emit_method", (PyCFunction)(void (*)(void))emit_method, METH_VARARGS | METH_KEYWORDS,
     "emit_method(general, *, fanout, lock, wake, declined, unless): an emitter's emit\n"
     "whose usual call is C (see _protocol.emit_method)."},
    {"held_acquire", (PyCFunction)(void (*)(void))held_acquire, METH_FASTCALL,
     "held_acquire(acquire, timeout): acquire(timeout) with the asynchronous signals\n"
     "held back, then their handlers run (see _wait.TimedWaiter)."},
    {NULL, NULL, 0, NULL},
};

/* ================================ the module ======================================= */

/* The layout here must be `_ring`'s and `_control`'s: a change there that forgot this
   file fails the import (and `_core` says so) rather than corrupt a bus. */
static int
check_layout(void)
{
    static const struct { const char *module, *name; long expected; } constants[] = {
        {"shmbus._ring", "HEADER_SIZE", RING_HEADER},
        {"shmbus._ring", "SLOT_HEADER_SIZE", SLOT_HEADER},
        {"shmbus._ring", "_ADOPTED", RING_ADOPTED},
        {"shmbus._ring", "_START_SEQ", RING_START},
        {"shmbus._ring", "_TAIL", RING_TAIL},
        {"shmbus._ring", "_WAITING", RING_SUB_WAITING},
        {"shmbus._ring", "_PINNED", RING_PINNED},
        {"shmbus._ring", "_SLEEPING", RING_SUB_SLEEPING},
        {"shmbus._ring", "KIND_INLINE", KIND_INLINE},
        {"shmbus._ring", "KIND_ARENA", KIND_ARENA},
        {"shmbus._ring", "KIND_SEGMENT", KIND_SEGMENT},
        {"shmbus._ring", "KIND_BATCH", KIND_BATCH},
        {"shmbus._ring", "LAYOUT_VERSION", 3},
        {"shmbus._control", "_COMMITTED", CONTROL_COMMITTED},
        {"shmbus._control", "_BYTES", CONTROL_BYTES},
        {"shmbus._control", "_GENERATION", CONTROL_GENERATION},
        {"shmbus._ring", "SLOT_SIZE", SLOT_SIZE},
        {"shmbus._codec", "PROTOCOL", PICKLE_PROTOCOL},
    };
    for (size_t i = 0; i < sizeof(constants) / sizeof(constants[0]); i++) {
        PyObject *module = PyImport_ImportModule(constants[i].module);
        PyObject *value = module ? PyObject_GetAttrString(module, constants[i].name) : NULL;
        Py_XDECREF(module);
        if (value == NULL) {
            return -1;
        }
        long found = PyLong_AsLong(value);
        Py_DECREF(value);
        if (found == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (found != constants[i].expected) {
            PyErr_Format(PyExc_ImportError,
                         "shmbus._ringcore was built for another ring layout (%s.%s is %ld, "
                         "it expects %ld): rebuild it (pip install -e .)",
                         constants[i].module, constants[i].name, found, constants[i].expected);
            return -1;
        }
    }
    return 0;
}

static PyObject *
imported(const char *module_name, const char *name)
{
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttrString(module, name);
    Py_DECREF(module);
    return value;
}

static int
add_type(PyObject *module, PyType_Spec *spec)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int failed = PyModule_AddType(module, (PyTypeObject *)type);
    Py_DECREF(type);
    return failed;
}

static int
ringcore_exec(PyObject *module)
{
    core_state *state = PyModule_GetState(module);
    if (check_layout() < 0) {
        return -1;
    }
    state->Undecodable = imported("shmbus._protocol", "Undecodable");
    state->DeserializationError = imported("shmbus._errors", "DeserializationError");
    static int fork_counted;
    if (!fork_counted) {
        if (pthread_atfork(NULL, NULL, count_fork) != 0) {
            PyErr_SetString(PyExc_ImportError, "pthread_atfork failed");
            return -1;
        }
        fork_counted = 1;
    }
    state->dumps = imported("pickle", "dumps");
    state->loads = imported("pickle", "loads");
    state->decode = imported("shmbus._codec", "decode");
    state->protocol = PyLong_FromLong(PICKLE_PROTOCOL);
    state->str_acquire = PyUnicode_InternFromString("acquire");
    state->str_borrow = PyUnicode_InternFromString("borrow");
    state->str_release = PyUnicode_InternFromString("release");
    state->str_slot = PyUnicode_InternFromString("slot");
    if (state->Undecodable == NULL || state->DeserializationError == NULL
        || state->dumps == NULL || state->loads == NULL || state->decode == NULL
        || state->protocol == NULL || state->str_acquire == NULL
        || state->str_borrow == NULL || state->str_release == NULL || state->str_slot == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Undecodable", state->Undecodable) < 0
        || PyModule_AddStringConstant(module, "NAME", "c") < 0
        || add_type(module, &Fanout_spec) < 0 || add_type(module, &Reader_spec) < 0
        || add_type(module, &FastMethod_spec) < 0 || add_type(module, &Lock_spec) < 0) {
        return -1;
    }
    state->Fanout = PyObject_GetAttrString(module, "Fanout");
    state->FastMethod = PyObject_GetAttrString(module, "FastMethod");
    state->Lock = PyObject_GetAttrString(module, "Lock");
    return state->Fanout && state->FastMethod && state->Lock ? 0 : -1;
}

static int
ringcore_traverse(PyObject *module, visitproc visit, void *arg)
{
    core_state *state = PyModule_GetState(module);
    Py_VISIT(state->Undecodable);
    Py_VISIT(state->DeserializationError);
    Py_VISIT(state->dumps);
    Py_VISIT(state->loads);
    Py_VISIT(state->decode);
    Py_VISIT(state->Fanout);
    Py_VISIT(state->FastMethod);
    Py_VISIT(state->Lock);
    return 0;
}

static int
ringcore_clear(PyObject *module)
{
    core_state *state = PyModule_GetState(module);
    Py_CLEAR(state->Undecodable);
    Py_CLEAR(state->DeserializationError);
    Py_CLEAR(state->dumps);
    Py_CLEAR(state->loads);
    Py_CLEAR(state->decode);
    Py_CLEAR(state->protocol);
    Py_CLEAR(state->str_acquire);
    Py_CLEAR(state->str_borrow);
    Py_CLEAR(state->str_release);
    Py_CLEAR(state->str_slot);
    Py_CLEAR(state->Fanout);
    Py_CLEAR(state->FastMethod);
    Py_CLEAR(state->Lock);
    return 0;
}

static void
ringcore_free(void *module)
{
    (void)ringcore_clear((PyObject *)module);
}

static PyModuleDef_Slot ringcore_slots[] = {
    {Py_mod_exec, ringcore_exec},
    {0, NULL},
};

static struct PyModuleDef ringcore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmbus._ringcore",
    .m_doc = "The ring protocol of shmbus._protocol, compiled (see the source's opening "
             "comment).",
    .m_size = sizeof(core_state),
    .m_methods = ringcore_functions,
    .m_slots = ringcore_slots,
    .m_traverse = ringcore_traverse,
    .m_clear = ringcore_clear,
    .m_free = ringcore_free,
};

PyMODINIT_FUNC
PyInit__ringcore(void)
{
    return PyModuleDef_Init(&ringcore_module);
}
